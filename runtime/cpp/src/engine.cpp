#include "planforge/engine.hpp"

#include <fstream>
#include <sstream>

#include "planforge/generation.hpp"

namespace planforge {
namespace {

// "10.13.0.35" -> "10.13.0": engines are bound to a TensorRT release; the build number does not matter.
std::string release(const std::string& version) {
  std::stringstream in(version);
  std::string part, out;
  for (int i = 0; i < 3 && std::getline(in, part, '.'); ++i) out += (i ? "." : "") + part;
  return out;
}

std::string rebuild_hint(const std::string& directory) {
  return " Rebuild it here: `planforge build PORTABLE_MODEL -o " + directory + " --target tensorrt --force`.";
}

}  // namespace

const std::map<std::string, int>& known_plugin_ops() {
  static const std::map<std::string, int> ops = {
      {"planforge::FusedAttentionDecode", 2}, {"planforge::FusedAttentionPrefill", 2},
      {"planforge::KVCacheUpdate", 2},        {"planforge::QuikMatMul", 2},
      {"planforge::QuikQuantize", 2},         {"planforge::SparseHeadsAttend", 1},
      {"planforge::SparseHeadsAttention", 3}, {"planforge::SparseHeadsOProj", 1},
      {"planforge::SparseHeadsQProj", 1},     {"planforge::SparseMLP", 2},
      {"planforge::SparseMLPDown", 1},        {"planforge::SparseMLPGateUp", 1},
  };
  return ops;
}

const EngineProfile& profile_for(const EngineInfo& engine, int batch, int tokens) {
  const EngineProfile& profile = engine.profiles.at(tokens > 1 ? 0 : 1);
  if (batch > profile.max_batch || tokens > profile.max_tokens) {
    throw PromptTooLongError("this step is " + std::to_string(batch) + " sequence(s) x " + std::to_string(tokens) +
                             " token(s); the engine's " + profile.name + " profile takes at most " +
                             std::to_string(profile.max_batch) + " x " + std::to_string(profile.max_tokens) +
                             ". Use a shorter prompt or a smaller batch, or rebuild with larger --max-batch / "
                             "--max-prefill.");
  }
  return profile;
}

std::string check_engine_directory(const std::string& directory, const Manifest& manifest) {
  if (!manifest.tensorrt) {
    throw EngineDirError(directory + " holds no TensorRT engine (its planforge.json has no tensorrt section; target " +
                         manifest.target + "). Build one with `planforge build PORTABLE_MODEL -o OUT --target "
                         "tensorrt`.");
  }
  const EngineInfo& e = *manifest.tensorrt;
  const std::string path = directory + "/" + e.engine_file;
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file || file.tellg() <= 0) {
    throw EngineDirError(path + " is missing or empty: the engine directory is incomplete." + rebuild_hint(directory));
  }
  std::string python;
  for (const auto& [name, plugin] : e.plugins) {
    const auto known = known_plugin_ops().find(name);
    if (known == known_plugin_ops().end() || known->second != plugin.version) {
      throw PluginVersionError(path + " uses " + name + " version " + std::to_string(plugin.version) +
                               "; this runtime has " +
                               (known == known_plugin_ops().end() ? std::string("no such op")
                                                                  : "version " + std::to_string(known->second)) +
                               ". Rebuild the engine with the planforge this runtime comes from.");
    }
    if (plugin.form != "aot") python += (python.empty() ? "" : ", ") + name + " v" + std::to_string(plugin.version);
  }
  if (!python.empty()) {
    throw EngineMismatchError(path + " uses Python plugins (" + python +
                              "): TensorRT calls back into Python for them, which a C++ process cannot. Run it with "
                              "`planforge run " + directory + " --backend tensorrt --device cuda`.");
  }
  return path;
}

std::string check_engine(const std::string& directory, const Manifest& manifest, const std::string& tensorrt_version,
                         const std::string& compute_capability) {
  const std::string path = check_engine_directory(directory, manifest);
  const EngineInfo& e = *manifest.tensorrt;
  if (release(e.tensorrt_version) != release(tensorrt_version)) {
    throw EngineMismatchError(path + " was built with TensorRT " + e.tensorrt_version + "; this runtime has TensorRT " +
                              tensorrt_version + ", and an engine runs only on the version that built it." +
                              rebuild_hint(directory));
  }
  if (e.compute_capability != compute_capability) {
    throw EngineMismatchError(path + " was built for a GPU of compute capability " + e.compute_capability +
                              "; this GPU is " + compute_capability +
                              ", and an engine runs only on the GPU kind it was built for." + rebuild_hint(directory));
  }
  return path;
}

}  // namespace planforge
