// The part of ONNX Runtime's C API that the ONNX Runtime backend calls, declared here so the runtime builds with no
// ONNX Runtime headers (no registry ships them; the onnxruntime wheel ships only libonnxruntime.so). The C API is
// ABI-stable: OrtApi is a table of function pointers that only ever grows at the end, so each function sits at a
// fixed slot for every ONNX Runtime that serves the requested API version. The slots below are those of
// onnxruntime_c_api.h (cross-checked against the static_asserts in onnxruntime_c_api.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace planforge::ort {

struct Status;
struct Env;
struct Session;
struct SessionOptions;
struct MemoryInfo;
struct Value;
struct IoBinding;
struct RunOptions;

// The API version requested: ONNX Runtime 1.13's, the oldest that has every slot used here.
constexpr uint32_t kApiVersion = 13;

// Enum values of the C API.
constexpr int kLoggingWarning = 2;
constexpr int kArenaAllocator = 1, kMemTypeDefault = 0;
constexpr int kFloat = 1, kInt64 = 7, kFloat16 = 10;

struct ApiBase {
  const void* const* (*GetApi)(uint32_t version);  // the OrtApi table, or null if this version is not served
  const char* (*GetVersionString)();
};

// Typed views of the OrtApi slots used. (The process's environment is never released: ReleaseEnv is not here.)
struct Api {
  explicit Api(const void* const* table) : table_(table) {}

  const char* GetErrorMessage(const Status* s) const { return call<const char* (*)(const Status*)>(2)(s); }
  Status* CreateEnv(int level, const char* id, Env** out) const {
    return call<Status* (*)(int, const char*, Env**)>(3)(level, id, out);
  }
  Status* CreateSession(const Env* env, const char* path, const SessionOptions* options, Session** out) const {
    return call<Status* (*)(const Env*, const char*, const SessionOptions*, Session**)>(7)(env, path, options, out);
  }
  Status* Run(Session* session, const RunOptions* options, const char* const* input_names, const Value* const* inputs,
              size_t n_inputs, const char* const* output_names, size_t n_outputs, Value** outputs) const {
    return call<Status* (*)(Session*, const RunOptions*, const char* const*, const Value* const*, size_t,
                            const char* const*, size_t, Value**)>(9)(session, options, input_names, inputs, n_inputs,
                                                                     output_names, n_outputs, outputs);
  }
  Status* CreateSessionOptions(SessionOptions** out) const { return call<Status* (*)(SessionOptions**)>(10)(out); }
  Status* SetIntraOpNumThreads(SessionOptions* options, int threads) const {
    return call<Status* (*)(SessionOptions*, int)>(24)(options, threads);
  }
  Status* CreateTensorWithDataAsOrtValue(const MemoryInfo* info, void* data, size_t bytes, const int64_t* shape,
                                         size_t rank, int type, Value** out) const {
    return call<Status* (*)(const MemoryInfo*, void*, size_t, const int64_t*, size_t, int, Value**)>(49)(
        info, data, bytes, shape, rank, type, out);
  }
  Status* GetTensorMutableData(Value* value, void** out) const {
    return call<Status* (*)(Value*, void**)>(51)(value, out);
  }
  Status* CreateCpuMemoryInfo(int allocator, int mem_type, MemoryInfo** out) const {
    return call<Status* (*)(int, int, MemoryInfo**)>(69)(allocator, mem_type, out);
  }
  void ReleaseStatus(Status* p) const { call<void (*)(Status*)>(93)(p); }
  void ReleaseMemoryInfo(MemoryInfo* p) const { call<void (*)(MemoryInfo*)>(94)(p); }
  void ReleaseSession(Session* p) const { call<void (*)(Session*)>(95)(p); }
  void ReleaseValue(Value* p) const { call<void (*)(Value*)>(96)(p); }
  void ReleaseSessionOptions(SessionOptions* p) const { call<void (*)(SessionOptions*)>(100)(p); }
  Status* RunWithBinding(Session* session, const RunOptions* options, const IoBinding* binding) const {
    return call<Status* (*)(Session*, const RunOptions*, const IoBinding*)>(133)(session, options, binding);
  }
  Status* CreateIoBinding(Session* session, IoBinding** out) const {
    return call<Status* (*)(Session*, IoBinding**)>(134)(session, out);
  }
  void ReleaseIoBinding(IoBinding* p) const { call<void (*)(IoBinding*)>(135)(p); }
  Status* BindInput(IoBinding* binding, const char* name, const Value* value) const {
    return call<Status* (*)(IoBinding*, const char*, const Value*)>(136)(binding, name, value);
  }
  Status* BindOutput(IoBinding* binding, const char* name, const Value* value) const {
    return call<Status* (*)(IoBinding*, const char*, const Value*)>(137)(binding, name, value);
  }

 private:
  template <typename Fn>
  Fn call(int slot) const {
    return reinterpret_cast<Fn>(const_cast<void*>(table_[slot]));
  }
  const void* const* table_;
};

}  // namespace planforge::ort
