// planforge.json, the compiled model's manifest: the fields a runtime needs (docs/onnx_contract.md).
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace planforge {

// A manifest that is missing, not JSON, or lacks what the runtime needs; the message names the file and field.
class ManifestError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Dims {
  int num_layers = 0, hidden_size = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, vocab_size = 0,
      max_seq_len = 0;
};

// One layer's preallocated cache of the lowered contract (io.kv_cache).
struct CacheLayout {
  int capacity = 0;
  bool rolling = false;
  int sinks = 0;
};

// One optimization profile of a TensorRT engine: the most sequences and tokens per sequence of a step.
struct EngineProfile {
  std::string name;  // "prefill" or "decode"
  int max_batch = 0;
  int max_tokens = 0;
};

struct PluginEntry {
  int version = 0;
  std::string form;  // "aot": its kernel is in the engine; "python": TensorRT calls back into Python
};

// The manifest's "tensorrt" section (build --target tensorrt): what the engine is bound to.
struct EngineInfo {
  std::string engine_file, tensorrt_version, compute_capability, ptx_isa;
  std::map<std::string, PluginEntry> plugins;
  std::vector<EngineProfile> profiles;  // prefill, decode
};

struct Manifest {
  std::string target;  // "onnxruntime", "torch", "portable", ...
  std::string dtype;
  Dims dims;
  std::vector<int> eos_token_ids;
  std::optional<int> pad_token_id;
  std::optional<int> streaming_slots;  // S + W of a streaming model
  int io_version = 0;                  // the lowered I/O contract's version; 0 for the portable contract
  std::vector<CacheLayout> kv_cache;   // per layer, lowered contract only
  bool shared_kv_buffers = false;      // io.past_present_share_buffer: GroupQueryAttention's cache written in place
  std::map<std::string, int> plugin_ops;
  std::optional<EngineInfo> tensorrt;  // an engine directory only

  // Reads ``directory``/planforge.json.
  static Manifest load(const std::string& directory);
  static Manifest parse(const std::string& json_text, const std::string& where);

 private:
  static Manifest parse_checked(const std::string& json_text, const std::string& where);
};

}  // namespace planforge
