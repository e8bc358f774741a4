// The TensorRT backend of the C++ runtime: an engine of `planforge build --target tensorrt`, run on the GPU with
// the in-place cache contract (in_place.hpp): one preallocated buffer per layer and K/V that the engine's
// KVCacheUpdate writes in place.
// Decode steps replay a CUDA graph of enqueueV3 (the engine's plugins are all AOT: check_engine refuses others).
//
// Compiled only with -DPLANFORGE_TENSORRT=ON where NvInfer.h is found. Written against the TensorRT 10 C++ API
// (name-based tensors, enqueueV3), with TensorRT 11 in mind; it has not been built or run against TensorRT.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iterator>

#include "planforge/in_place.hpp"
#include "planforge/runtime.hpp"

namespace planforge {
namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw BackendUnavailableError(std::string(what) + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR) errors.emplace_back(message);
  }
  std::vector<std::string> errors;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
};

std::string cache_name(int layer, bool value, bool out) {
  return std::string(out ? "kv_cache_out." : "kv_cache.") + std::to_string(layer) + (value ? ".value" : ".key");
}

class TensorRTBackend : public InPlaceBackend {
 public:
  TensorRTBackend(const std::string& directory, const Manifest& manifest) : manifest_(manifest) {
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp props{};
    cuda_check(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
    const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch
    const std::string version =
        std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    const std::string path = check_engine(directory, manifest, version,
                                          std::to_string(props.major) + "." + std::to_string(props.minor));
    std::ifstream file(path, std::ios::binary);
    const std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw EngineMismatchError("TensorRT could not deserialize " + path + ": the file is corrupt or a plugin it uses "
                                "is missing. TensorRT said: " + (logger_.errors.empty() ? "nothing" : logger_.errors.back()));
    }
    context_.reset(engine_->createExecutionContext());
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    element_ = manifest.dtype == "fp32" ? 4 : 2;
    // Fixed addresses for every step's inputs and the decode logits, so a captured decode graph stays valid.
    const EngineProfile& prefill = manifest.tensorrt->profiles.at(0);
    ids_.reserve(sizeof(int64_t) * prefill.max_batch * prefill.max_tokens);
    positions_.reserve(sizeof(int64_t) * prefill.max_batch * prefill.max_tokens);
    lengths_device_.reserve(sizeof(int32_t) * prefill.max_batch);
    decode_logits_.reserve(sizeof(float) * manifest.tensorrt->profiles.at(1).max_batch * manifest.dims.vocab_size);
  }

  ~TensorRTBackend() override {
    if (graph_) cudaGraphExecDestroy(graph_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void reset_buffers(int batch) override {
    caches_.clear();
    for (int i = 0; i < 2 * manifest_.dims.num_layers; ++i) {
      caches_.push_back(std::make_unique<DeviceBuffer>());
      caches_.back()->reserve(static_cast<size_t>(batch) * row_bytes(i / 2));
      cuda_check(cudaMemsetAsync(caches_.back()->ptr, 0, caches_.back()->bytes, stream_), "cudaMemsetAsync");
    }
    if (graph_) cudaGraphExecDestroy(graph_), graph_ = nullptr;  // it bound the old buffers
  }

 private:
  size_t row_bytes(int layer) const {
    const Dims& d = manifest_.dims;
    return static_cast<size_t>(d.num_kv_heads) * manifest_.kv_cache.at(layer).capacity * d.head_dim * element_;
  }

  // One enqueue over rows [first_row, first_row + rows) of the caches.
  std::vector<float> step(const int64_t* ids, const int64_t* positions, const int32_t* lengths, int rows, int seq,
                          int first_row) override {
    profile_for(*manifest_.tensorrt, rows, seq);
    const int vocab = manifest_.dims.vocab_size;
    DeviceBuffer& logits = seq == 1 ? decode_logits_ : prefill_logits_;
    logits.reserve(sizeof(float) * rows * seq * vocab);  // the decode one is already large enough
    cuda_check(cudaMemcpyAsync(ids_.ptr, ids, sizeof(int64_t) * rows * seq, cudaMemcpyHostToDevice, stream_), "ids");
    cuda_check(cudaMemcpyAsync(positions_.ptr, positions, sizeof(int64_t) * rows * seq, cudaMemcpyHostToDevice,
                               stream_), "positions");
    cuda_check(cudaMemcpyAsync(lengths_device_.ptr, lengths, sizeof(int32_t) * rows, cudaMemcpyHostToDevice, stream_),
               "past_lengths");
    const bool graphed = seq == 1 && rows == batch_ && first_row == 0;
    if (!graphed || !graph_) {
      bind(rows, seq, first_row, logits.ptr);
      if (!context_->enqueueV3(stream_)) throw BackendUnavailableError("TensorRT failed to run the engine: " +
                                                                      (logger_.errors.empty() ? "" : logger_.errors.back()));
      if (graphed) capture();  // after one plain run, as TensorRT asks before capturing a new shape
    } else {
      cuda_check(cudaGraphLaunch(graph_, stream_), "cudaGraphLaunch");
    }
    std::vector<float> last(static_cast<size_t>(rows) * vocab);
    cuda_check(cudaMemcpy2DAsync(last.data(), sizeof(float) * vocab,
                                 static_cast<float*>(logits.ptr) + static_cast<size_t>(seq - 1) * vocab,
                                 sizeof(float) * seq * vocab, sizeof(float) * vocab, rows, cudaMemcpyDeviceToHost,
                                 stream_), "logits");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return last;
  }

  void bind(int rows, int seq, int first_row, void* logits) {
    context_->setOptimizationProfileAsync(seq > 1 ? 0 : 1, stream_);
    context_->setInputShape("input_ids", nvinfer1::Dims2(rows, seq));
    context_->setInputShape("position_ids", nvinfer1::Dims2(rows, seq));
    nvinfer1::Dims lengths_shape{};
    lengths_shape.nbDims = 1;
    lengths_shape.d[0] = rows;
    context_->setInputShape("past_lengths", lengths_shape);
    context_->setTensorAddress("input_ids", ids_.ptr);
    context_->setTensorAddress("position_ids", positions_.ptr);
    context_->setTensorAddress("past_lengths", lengths_device_.ptr);
    context_->setTensorAddress("logits", logits);
    const Dims& d = manifest_.dims;
    for (int layer = 0; layer < d.num_layers; ++layer) {
      for (int value = 0; value < 2; ++value) {
        void* rows_ptr = static_cast<char*>(caches_[2 * layer + value]->ptr) + first_row * row_bytes(layer);
        context_->setInputShape(cache_name(layer, value, false).c_str(),
                                nvinfer1::Dims4(rows, d.num_kv_heads, manifest_.kv_cache[layer].capacity, d.head_dim));
        context_->setTensorAddress(cache_name(layer, value, false).c_str(), rows_ptr);
        context_->setTensorAddress(cache_name(layer, value, true).c_str(), rows_ptr);  // aliased: written in place
      }
    }
  }

  void capture() {
    cudaGraph_t graph = nullptr;
    cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    const bool ok = context_->enqueueV3(stream_);
    cuda_check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
    if (ok) cuda_check(cudaGraphInstantiate(&graph_, graph, 0), "cudaGraphInstantiate");
    cudaGraphDestroy(graph);
  }

  Manifest manifest_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  cudaGraphExec_t graph_ = nullptr;
  size_t element_ = 2;
  std::vector<std::unique_ptr<DeviceBuffer>> caches_;
  DeviceBuffer ids_, positions_, lengths_device_, prefill_logits_, decode_logits_;
};

}  // namespace

bool tensorrt_compiled_in() { return true; }

std::unique_ptr<StepBackend> open_tensorrt_backend(const std::string& directory, const Manifest& manifest) {
  return std::make_unique<TensorRTBackend>(directory, manifest);
}

}  // namespace planforge
