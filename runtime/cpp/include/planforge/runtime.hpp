// The embeddable runtime: Runtime(model_dir) opens a TensorRT engine directory or a model lowered onto ONNX Runtime's
// CPU kernels; generate() runs prefill, then decode with the KV cache, sampling greedy or with temperature / top-k /
// top-p under a seed, honouring stop tokens, over a batch of prompts (generation.hpp). The TensorRT backend is
// compiled only with -DPLANFORGE_TENSORRT=ON where NvInfer.h is found; without it Runtime(engine_dir) checks the
// directory and then refuses with BackendUnavailableError. The ONNX Runtime backend loads libonnxruntime.so at run
// time. Any other StepBackend can be given instead.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "planforge/engine.hpp"
#include "planforge/generation.hpp"
#include "planforge/manifest.hpp"

namespace planforge {

struct RuntimeOptions {
  int threads = 0;  // ONNX Runtime's intra-op threads; 0: its default (one per core)
  // The libonnxruntime.so to load; empty: $PLANFORGE_ONNXRUNTIME_LIBRARY, else the loader's search path.
  std::string onnxruntime_library;
};

// The TensorRT backend over an engine directory whose manifest passed check_engine (tensorrt_backend.cpp; without
// TensorRT, a stub that throws BackendUnavailableError).
std::unique_ptr<StepBackend> open_tensorrt_backend(const std::string& directory, const Manifest& manifest);
bool tensorrt_compiled_in();
// The ONNX Runtime backend over a model whose attention shares its cache buffers (onnxruntime_backend.cpp).
std::unique_ptr<StepBackend> open_onnxruntime_backend(const std::string& directory, const Manifest& manifest,
                                                      const RuntimeOptions& options);

class Runtime {
 public:
  explicit Runtime(const std::string& model_dir, const RuntimeOptions& options = {});
  Runtime(Manifest manifest, std::unique_ptr<StepBackend> backend);

  GenerationResult generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
                            const std::function<void(int row, int64_t token)>& on_token = nullptr);
  const Manifest& manifest() const { return manifest_; }

 private:
  Manifest manifest_;
  std::unique_ptr<StepBackend> backend_;
};

}  // namespace planforge
