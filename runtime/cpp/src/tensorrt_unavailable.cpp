// The TensorRT backend of a build without TensorRT (-DPLANFORGE_TENSORRT=OFF, the default): the engine directory
// is still checked as far as it can be without TensorRT, then refused with what to do.
#include "planforge/runtime.hpp"

namespace planforge {

bool tensorrt_compiled_in() { return false; }

std::unique_ptr<StepBackend> open_tensorrt_backend(const std::string& directory, const Manifest& manifest) {
  check_engine_directory(directory, manifest);  // the directory's own errors come first
  throw BackendUnavailableError("this planforge runtime was built without TensorRT, so it cannot run " + directory +
                                ": rebuild it with `cmake -DPLANFORGE_TENSORRT=ON` on a machine with TensorRT >= 10.9 "
                                "(NvInfer.h) and CUDA.");
}

}  // namespace planforge
