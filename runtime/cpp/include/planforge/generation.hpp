// The generation loop of planforge/runtime/generator.py over any backend that runs one forward step:
// left-padded batches, prefill then one token per step, stop tokens, max_new_tokens, the max_seq_len limit
// (none for a streaming model, whose mask covers at most its S + W slots), and the in-place cache's slots.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "planforge/manifest.hpp"
#include "planforge/sampling.hpp"

namespace planforge {

class InvalidPromptError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class PromptTooLongError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// One forward step of a compiled model (the Python Backend.forward with last_only=True): ids and positions
// (batch x seq), the attention mask (batch x mask_cols: the cache's columns then the new ones), row-major;
// returns the last position's logits, batch x vocab. The backend keeps its own KV cache between calls.
class StepBackend {
 public:
  virtual ~StepBackend() = default;
  virtual void reset(int batch) = 0;  // an empty cache for ``batch`` sequences
  virtual std::vector<float> forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                                     const std::vector<int64_t>& positions, int batch, int seq, int mask_cols) = 0;
};

struct GenerationConfig {
  int max_new_tokens = 64;
  SamplingConfig sampling;
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
};

struct GenerationResult {
  std::vector<std::vector<int64_t>> tokens;
  std::vector<std::string> finish_reasons;  // "stop", "length" or "max_seq_len", per prompt
  double prefill_seconds = 0, decode_seconds = 0;  // wall time of the prefill (its first token's logits) and the rest
};

// The slot each token of a layer's preallocated cache goes to (KVCacheUpdate): linear, rolling window, or
// StreamingLLM sinks + rolling window; and how many entries are valid after ``written`` tokens.
struct CacheSlots {
  CacheLayout layout;
  int64_t slot(int64_t position) const;
  int64_t valid(int64_t written) const;
};

class Generator {
 public:
  Generator(const Manifest& manifest, StepBackend& backend) : manifest_(manifest), backend_(backend) {}
  GenerationResult generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
                            const std::function<void(int row, int64_t token)>& on_token = nullptr);
  void check_prompts(const std::vector<std::vector<int64_t>>& prompts) const;

 private:
  const Manifest& manifest_;
  StepBackend& backend_;
};

}  // namespace planforge
