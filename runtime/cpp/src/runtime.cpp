#include "planforge/runtime.hpp"

namespace planforge {

Runtime::Runtime(const std::string& model_dir, const RuntimeOptions& options) : manifest_(Manifest::load(model_dir)) {
  if (manifest_.target == "tensorrt") {
    backend_ = open_tensorrt_backend(model_dir, manifest_);
  } else if (manifest_.target == "onnxruntime" || manifest_.target == "portable") {
    backend_ = open_onnxruntime_backend(model_dir, manifest_, options);
  } else {
    throw EngineDirError(model_dir + " is a '" + manifest_.target + "' model, which this runtime cannot run: it runs a "
                         "TensorRT engine directory (`planforge build PORTABLE_MODEL -o OUT --target tensorrt`) or a "
                         "model for ONNX Runtime (`planforge export`, or `planforge optimize` with the default --target "
                         "onnxruntime). Run this one with `planforge run`.");
  }
}

Runtime::Runtime(Manifest manifest, std::unique_ptr<StepBackend> backend)
    : manifest_(std::move(manifest)), backend_(std::move(backend)) {}

GenerationResult Runtime::generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
                                   const std::function<void(int, int64_t)>& on_token) {
  Generator generator(manifest_, *backend_);
  return generator.generate(prompts, config, on_token);
}

}  // namespace planforge
