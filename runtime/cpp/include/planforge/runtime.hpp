// The embeddable runtime: Runtime(engine_dir) opens a TensorRT engine directory, generate() runs prefill, then
// decode with the KV cache, sampling greedy or with temperature / top-k / top-p under a seed, honouring stop
// tokens, over a batch of prompts (generation.hpp). The TensorRT backend is compiled only with
// -DPLANFORGE_TENSORRT=ON where NvInfer.h is found; without it Runtime(engine_dir) checks the directory and then
// refuses with BackendUnavailableError. Any other StepBackend can be given instead.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "planforge/engine.hpp"
#include "planforge/generation.hpp"
#include "planforge/manifest.hpp"

namespace planforge {

// The TensorRT backend over an engine directory whose manifest passed check_engine (tensorrt_backend.cpp; without
// TensorRT, a stub that throws BackendUnavailableError).
std::unique_ptr<StepBackend> open_tensorrt_backend(const std::string& directory, const Manifest& manifest);
bool tensorrt_compiled_in();

class Runtime {
 public:
  explicit Runtime(const std::string& engine_dir);
  Runtime(Manifest manifest, std::unique_ptr<StepBackend> backend);

  GenerationResult generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
                            const std::function<void(int row, int64_t token)>& on_token = nullptr);
  const Manifest& manifest() const { return manifest_; }

 private:
  Manifest manifest_;
  std::unique_ptr<StepBackend> backend_;
};

}  // namespace planforge
