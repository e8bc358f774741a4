// The ONNX Runtime backend of the C++ runtime, on the CPU, with the two cache contracts of
// planforge/runtime/backends/onnxruntime.py: the graph lowered onto ONNX Runtime's kernels (`planforge optimize`, the
// default --target onnxruntime), whose GroupQueryAttention writes one buffer per layer and K/V in place (in_place.hpp),
// and the portable graph (`planforge export`), whose presents are the next step's pasts. It is the generation loop of
// `planforge run` on those models (runtime/native.py): no Python between two steps.
//
// ONNX Runtime is loaded at run time (dlopen) from the onnxruntime wheel's libonnxruntime.so, through its C API
// (onnxruntime_api.hpp), so building needs no ONNX Runtime.
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "onnxruntime_api.hpp"
#include "planforge/in_place.hpp"
#include "planforge/runtime.hpp"

namespace planforge {
namespace {

// libonnxruntime.so, its API table and the process's one ONNX Runtime environment, loaded once per path.
struct Library {
  void* handle = nullptr;
  std::unique_ptr<ort::Api> api;
  ort::Env* env = nullptr;
  std::string version;
};

const Library& load_library(const std::string& requested) {
  static std::mutex lock;
  static std::map<std::string, Library> loaded;
  std::lock_guard<std::mutex> guard(lock);
  std::string path = requested;
  if (path.empty() && std::getenv("PLANFORGE_ONNXRUNTIME_LIBRARY")) path = std::getenv("PLANFORGE_ONNXRUNTIME_LIBRARY");
  if (path.empty()) path = "libonnxruntime.so";
  auto found = loaded.find(path);
  if (found != loaded.end()) return found->second;
  Library library;
  library.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library.handle) {
    const char* why = dlerror();
    throw BackendUnavailableError("could not load ONNX Runtime (" + path + "): " + (why ? why : "unknown error") +
                                  ". Give the onnxruntime wheel's library: PLANFORGE_ONNXRUNTIME_LIBRARY=.../onnxruntime/"
                                  "capi/libonnxruntime.so.VERSION (`pip install onnxruntime`).");
  }
  using GetApiBase = const ort::ApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(library.handle, "OrtGetApiBase"));
  const ort::ApiBase* base = get_base ? get_base() : nullptr;
  const void* const* table = base ? base->GetApi(ort::kApiVersion) : nullptr;
  if (!table) {
    throw BackendUnavailableError(path + " is not an ONNX Runtime >= 1.13 library (no C API of version " +
                                  std::to_string(ort::kApiVersion) + "). `pip install -U onnxruntime`.");
  }
  library.version = base->GetVersionString();
  library.api = std::make_unique<ort::Api>(table);
  if (ort::Status* status = library.api->CreateEnv(ort::kLoggingWarning, "planforge", &library.env)) {
    const std::string message = library.api->GetErrorMessage(status);
    library.api->ReleaseStatus(status);
    throw BackendUnavailableError("ONNX Runtime could not start: " + message);
  }
  return loaded.emplace(path, std::move(library)).first->second;
}

// A zeroed host buffer, aligned for the kernels' vector loads.
struct HostBuffer {
  explicit HostBuffer(size_t n) : bytes(n), ptr(static_cast<char*>(std::aligned_alloc(64, (n + 63) / 64 * 64))) {
    if (!ptr) throw std::bad_alloc();
    std::memset(ptr, 0, bytes);
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { std::free(ptr); }
  size_t bytes;
  char* ptr;
};

// ONNX Runtime for this model; the model's own problem (a bf16 cache ONNX Runtime cannot run) comes before the
// machine's.
const Library& library_for(const std::string& directory, const Manifest& manifest, const RuntimeOptions& options) {
  if (manifest.dtype != "fp32" && manifest.dtype != "fp16") {
    throw BackendUnavailableError(directory + " holds a " + manifest.dtype + " model, whose KV cache ONNX Runtime's "
                                  "CPU kernels cannot take. Re-export with --dtype fp32 or fp16.");
  }
  return load_library(options.onnxruntime_library);
}

// The last position's logits of each row: (rows, seq, vocab) -> (rows, vocab).
std::vector<float> last_positions(const float* logits, int rows, int seq, int vocab) {
  std::vector<float> last(static_cast<size_t>(rows) * vocab);
  for (int b = 0; b < rows; ++b) {
    std::copy_n(logits + (static_cast<size_t>(b) * seq + seq - 1) * vocab, vocab,
                last.begin() + static_cast<size_t>(b) * vocab);
  }
  return last;
}

// ONNX Runtime only reads its inputs; its C API takes them as non-const all the same.
void* input(const int64_t* data) { return const_cast<int64_t*>(data); }

// One ONNX Runtime session of a compiled model's model.onnx, and what both cache contracts below need from it.
class OrtModel {
 public:
  OrtModel(const std::string& directory, const Manifest& manifest, const RuntimeOptions& options)
      : library_(library_for(directory, manifest, options)), api(*library_.api) {
    element_bytes = manifest.dtype == "fp32" ? 4 : 2;
    element_type = manifest.dtype == "fp32" ? ort::kFloat : ort::kFloat16;
    const std::string model = directory + "/model.onnx";
    if (!std::ifstream(model).good()) {
      throw EngineDirError(directory + " has no model.onnx. Re-export the model (`planforge export`).");
    }
    ort::SessionOptions* session_options = nullptr;
    check(api.CreateSessionOptions(&session_options), "SessionOptions");
    std::unique_ptr<ort::SessionOptions, std::function<void(ort::SessionOptions*)>> owned(
        session_options, [this](ort::SessionOptions* p) { api.ReleaseSessionOptions(p); });
    if (options.threads > 0) check(api.SetIntraOpNumThreads(session_options, options.threads), "intra-op threads");
    if (ort::Status* status = api.CreateSession(library_.env, model.c_str(), session_options, &session)) {
      const std::string message = api.GetErrorMessage(status);
      api.ReleaseStatus(status);
      throw EngineDirError("ONNX Runtime " + library_.version + " could not load " + model + ": " +
                           message.substr(0, message.find('\n')) + ". Re-export the model, or `pip install -U "
                           "onnxruntime`.");
    }
    check(api.CreateCpuMemoryInfo(ort::kArenaAllocator, ort::kMemTypeDefault, &cpu), "MemoryInfo");
    for (int layer = 0; layer < manifest.dims.num_layers; ++layer) {
      for (const char* part : {"key", "value"}) {
        past_names.push_back("past_key_values." + std::to_string(layer) + "." + part);
        present_names.push_back("present." + std::to_string(layer) + "." + part);
      }
    }
  }
  OrtModel(const OrtModel&) = delete;
  OrtModel& operator=(const OrtModel&) = delete;
  ~OrtModel() {
    if (cpu) api.ReleaseMemoryInfo(cpu);
    if (session) api.ReleaseSession(session);
  }

  void check(ort::Status* status, const char* what) const {
    if (!status) return;
    const std::string message = api.GetErrorMessage(status);
    api.ReleaseStatus(status);
    throw BackendUnavailableError(std::string("ONNX Runtime failed (") + what + "): " + message);
  }

  // A tensor borrowing ``data``; the caller releases it.
  ort::Value* tensor(void* data, size_t bytes, std::initializer_list<int64_t> shape, int type) const {
    ort::Value* value = nullptr;
    check(api.CreateTensorWithDataAsOrtValue(cpu, data, bytes, shape.begin(), shape.size(), type, &value), "tensor");
    return value;
  }

 private:
  const Library& library_;

 public:
  const ort::Api& api;
  ort::Session* session = nullptr;
  ort::MemoryInfo* cpu = nullptr;
  size_t element_bytes = 4;
  int element_type = ort::kFloat;
  std::vector<std::string> past_names, present_names;
};

// The graph lowered onto GroupQueryAttention: past and present of a layer are one preallocated buffer, bound once,
// which the kernel writes in place (io.past_present_share_buffer).
class SharedBufferBackend : public InPlaceBackend {
 public:
  SharedBufferBackend(const std::string& directory, const Manifest& manifest, const RuntimeOptions& options)
      : manifest_(manifest), model_(directory, manifest, options), api_(model_.api) {
    model_.check(api_.CreateIoBinding(model_.session, &binding_), "IoBinding");
  }

  ~SharedBufferBackend() override {
    release_step_values();
    if (binding_) api_.ReleaseIoBinding(binding_);
  }

 private:
  size_t row_bytes() const {
    const Dims& d = manifest_.dims;
    return static_cast<size_t>(d.num_kv_heads) * d.max_seq_len * d.head_dim * model_.element_bytes;
  }

  void reset_buffers(int batch) override {
    buffers_.clear();
    for (size_t i = 0; i < model_.past_names.size(); ++i) {
      buffers_.push_back(std::make_unique<HostBuffer>(batch * row_bytes()));
    }
    bound_rows_ = bound_first_ = -1;
  }

  // A tensor over memory this backend owns, released once bound (the binding holds its own reference).
  ort::Value* tensor(void* data, size_t bytes, std::initializer_list<int64_t> shape, int type) {
    values_.push_back(model_.tensor(data, bytes, shape, type));
    return values_.back();
  }

  void release_step_values() {
    for (ort::Value* value : values_) api_.ReleaseValue(value);
    values_.clear();
  }

  void bind(bool input, const std::string& name, ort::Value* value) {
    model_.check(input ? api_.BindInput(binding_, name.c_str(), value) : api_.BindOutput(binding_, name.c_str(), value),
                 "bind");
  }

  std::vector<float> step(const int64_t* ids, const int64_t* positions, const int32_t* lengths, int rows, int seq,
                          int first_row) override {
    const Dims& d = manifest_.dims;
    // The graph reads each sequence's length from the mask's sum and the step's span from its width: the tokens of
    // sequence b are its slots [0, lengths[b] + seq).
    int width = 0;
    for (int b = 0; b < rows; ++b) width = std::max(width, lengths[b] + seq);
    if (width > d.max_seq_len) {
      throw PromptTooLongError("the KV cache holds " + std::to_string(d.max_seq_len) + " positions (max_seq_len); this "
                               "step needs " + std::to_string(width) + ". Use a shorter prompt or fewer new tokens.");
    }
    mask_.assign(static_cast<size_t>(rows) * width, 0);
    for (int b = 0; b < rows; ++b) std::fill_n(mask_.begin() + b * width, lengths[b] + seq, 1);
    logits_.resize(static_cast<size_t>(rows) * seq * d.vocab_size);
    const int64_t r = rows, s = seq;
    const size_t token_bytes = sizeof(int64_t) * rows * seq;
    bind(true, "input_ids", tensor(input(ids), token_bytes, {r, s}, ort::kInt64));
    bind(true, "attention_mask", tensor(mask_.data(), 8 * mask_.size(), {r, width}, ort::kInt64));
    bind(true, "position_ids", tensor(input(positions), token_bytes, {r, s}, ort::kInt64));
    bind(false, "logits", tensor(logits_.data(), 4 * logits_.size(), {r, s, d.vocab_size}, ort::kFloat));
    if (rows != bound_rows_ || first_row != bound_first_) {  // the cache buffers, or one row's slices of them
      for (size_t i = 0; i < buffers_.size(); ++i) {
        ort::Value* cache = tensor(buffers_[i]->ptr + first_row * row_bytes(), rows * row_bytes(),
                                   {r, d.num_kv_heads, d.max_seq_len, d.head_dim}, model_.element_type);
        bind(true, model_.past_names[i], cache);
        bind(false, model_.present_names[i], cache);  // the same buffer: written in place
      }
      bound_rows_ = rows, bound_first_ = first_row;
    }
    release_step_values();
    model_.check(api_.RunWithBinding(model_.session, nullptr, binding_), "run");
    return last_positions(logits_.data(), rows, seq, d.vocab_size);
  }

  Manifest manifest_;
  OrtModel model_;
  const ort::Api& api_;
  ort::IoBinding* binding_ = nullptr;
  std::vector<std::unique_ptr<HostBuffer>> buffers_;
  int bound_rows_ = -1, bound_first_ = -1;
  std::vector<int64_t> mask_;
  std::vector<float> logits_;
  std::vector<ort::Value*> values_;
};

// The portable graph: opset-23 Attention returns present = concat(past, new) (or, streaming, the graph's own S + W
// slots), a new tensor per step, which the next step takes as its past. The mask covers the left padding itself.
class ConcatCacheBackend : public StepBackend {
 public:
  ConcatCacheBackend(const std::string& directory, const Manifest& manifest, const RuntimeOptions& options)
      : manifest_(manifest), model_(directory, manifest, options), api_(model_.api) {
    input_names_ = {"input_ids", "attention_mask", "position_ids"};
    output_names_ = {"logits"};
    for (const auto& name : model_.past_names) input_names_.push_back(name.c_str());
    for (const auto& name : model_.present_names) output_names_.push_back(name.c_str());
  }

  ~ConcatCacheBackend() override { release(pasts_); }

  void reset(int batch) override {
    release(pasts_);
    const Dims& d = manifest_.dims;
    for (size_t i = 0; i < model_.past_names.size(); ++i) {  // no past tokens: (batch, kv_heads, 0, head_dim)
      pasts_.push_back(model_.tensor(&empty_, 0, {batch, d.num_kv_heads, 0, d.head_dim}, model_.element_type));
    }
  }

  std::vector<float> forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                             const std::vector<int64_t>& positions, int batch, int seq, int mask_cols) override {
    const int64_t b = batch, s = seq;
    std::vector<ort::Value*> inputs = {
        model_.tensor(input(ids.data()), 8 * ids.size(), {b, s}, ort::kInt64),
        model_.tensor(input(mask.data()), 8 * mask.size(), {b, mask_cols}, ort::kInt64),
        model_.tensor(input(positions.data()), 8 * positions.size(), {b, s}, ort::kInt64)};
    std::vector<ort::Value*> outputs(output_names_.size(), nullptr);  // ONNX Runtime allocates them
    std::vector<const ort::Value*> feeds(inputs.begin(), inputs.end());
    feeds.insert(feeds.end(), pasts_.begin(), pasts_.end());
    ort::Status* status = api_.Run(model_.session, nullptr, input_names_.data(), feeds.data(), feeds.size(),
                                   output_names_.data(), outputs.size(), outputs.data());
    release(inputs);
    if (status) {
      release(outputs);
      model_.check(status, "run");
    }
    release(pasts_);
    pasts_.assign(outputs.begin() + 1, outputs.end());
    void* data = nullptr;
    ort::Status* read = api_.GetTensorMutableData(outputs[0], &data);
    std::vector<float> last;
    if (!read) last = last_positions(static_cast<const float*>(data), batch, seq, manifest_.dims.vocab_size);
    api_.ReleaseValue(outputs[0]);
    model_.check(read, "logits");
    return last;
  }

 private:
  void release(std::vector<ort::Value*>& values) {
    for (ort::Value* value : values) {
      if (value) api_.ReleaseValue(value);
    }
    values.clear();
  }

  Manifest manifest_;
  OrtModel model_;
  const ort::Api& api_;
  std::vector<const char*> input_names_, output_names_;
  std::vector<ort::Value*> pasts_;
  float empty_ = 0;  // the address of the empty past tensors, which hold no element
};

}  // namespace

std::unique_ptr<StepBackend> open_onnxruntime_backend(const std::string& directory, const Manifest& manifest,
                                                      const RuntimeOptions& options) {
  if (manifest.shared_kv_buffers) return std::make_unique<SharedBufferBackend>(directory, manifest, options);
  return std::make_unique<ConcatCacheBackend>(directory, manifest, options);
}

}  // namespace planforge
