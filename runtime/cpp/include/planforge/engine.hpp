// A TensorRT engine directory (planforge build --target tensorrt): what its manifest binds the engine to, and
// the checks it passes before TensorRT reads it, the same as planforge/runtime/tensorrt_engine.py. Plain C++:
// no TensorRT needed, so CI tests these; the backend that runs the engine is tensorrt_backend.cpp.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "planforge/manifest.hpp"

namespace planforge {

// The engine file is missing or empty, or the directory holds no engine at all.
class EngineDirError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Built with another TensorRT, or for another GPU kind, or it needs Python (a Python plugin).
class EngineMismatchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A plugin op, or op version, this runtime does not have.
class PluginVersionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The backend is not part of this build (TensorRT off), or the machine lacks what it needs.
class BackendUnavailableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The plugin ops, with their versions, that planforge engines may use: planforge/plugins' registry, which
// tests/runtime/test_cpp_runtime.py keeps this table equal to.
const std::map<std::string, int>& known_plugin_ops();

// Which profile runs a step (prefill for several tokens, decode for one), and refuses one outside it.
const EngineProfile& profile_for(const EngineInfo& engine, int batch, int tokens);

// The engine file's path, after the checks that need no TensorRT: an engine section and a non-empty file, every
// plugin of a version this runtime knows, and AOT (a Python plugin calls back into Python, which a C++ process
// cannot).
std::string check_engine_directory(const std::string& directory, const Manifest& manifest);

// check_engine_directory, then the engine's binding: this TensorRT version ("major.minor.patch", compared on
// those three) and this GPU's compute capability ("9.0").
std::string check_engine(const std::string& directory, const Manifest& manifest, const std::string& tensorrt_version,
                         const std::string& compute_capability);

}  // namespace planforge
