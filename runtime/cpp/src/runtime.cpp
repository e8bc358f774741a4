#include "planforge/runtime.hpp"

namespace planforge {

Runtime::Runtime(const std::string& engine_dir) : manifest_(Manifest::load(engine_dir)) {
  if (manifest_.target != "tensorrt") {
    throw EngineDirError(engine_dir + " is a '" + manifest_.target + "' model, not a TensorRT engine directory. Build "
                         "one with `planforge build PORTABLE_MODEL -o OUT --target tensorrt`, or run this one with "
                         "`planforge run`.");
  }
  backend_ = open_tensorrt_backend(engine_dir, manifest_);
}

Runtime::Runtime(Manifest manifest, std::unique_ptr<StepBackend> backend)
    : manifest_(std::move(manifest)), backend_(std::move(backend)) {}

GenerationResult Runtime::generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
                                   const std::function<void(int, int64_t)>& on_token) {
  Generator generator(manifest_, *backend_);
  return generator.generate(prompts, config, on_token);
}

}  // namespace planforge
