// Next-token selection, the same numbers as planforge/runtime/sampling.py: greedy, or temperature / top-k /
// top-p sampling by inverse CDF from numpy's default generator (PCG64 seeded through SeedSequence), so a seed
// picks the same tokens in Python and C++ (tests/runtime/test_cpp_runtime.py checks it).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

namespace planforge {

class InvalidGenerationConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct SamplingConfig {
  bool do_sample = false;
  double temperature = 1.0;
  int top_k = 0;       // 0 keeps every token
  double top_p = 1.0;  // 1 keeps every token
  std::optional<uint64_t> seed;

  void validate() const;  // throws InvalidGenerationConfigError with the Python messages
};

// numpy.random.default_rng(seed): SeedSequence -> PCG64 (XSL-RR), and Generator.random()'s doubles.
class NumpyPCG64 {
 public:
  explicit NumpyPCG64(std::optional<uint64_t> seed);
  uint64_t next_uint64();
  double next_double();  // [0, 1), 53 bits

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
  void step();
};

// Scaled logits with the tokens outside top-k / top-p set to -inf (Python's filter_logits, one row).
std::vector<double> filter_logits(const float* logits, int vocab, const SamplingConfig& config);

class Sampler {
 public:
  explicit Sampler(const SamplingConfig& config);
  // logits (batch, vocab) row-major -> one token per row.
  std::vector<int64_t> operator()(const float* logits, int batch, int vocab);

 private:
  SamplingConfig config_;
  NumpyPCG64 rng_;
};

}  // namespace planforge
