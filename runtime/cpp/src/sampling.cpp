#include "planforge/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>

namespace planforge {
namespace {

// numpy's SeedSequence (bit_generator.pyx): a 4-word pool mixed from the seed's 32-bit words.
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kPool = 4, kXShift = 16;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  return result ^ (result >> kXShift);
}

std::vector<uint64_t> seed_sequence_state(uint64_t seed, int n_words64) {
  std::vector<uint32_t> entropy;
  do {  // an int seed as little-endian 32-bit words; 0 is one word
    entropy.push_back(static_cast<uint32_t>(seed & 0xffffffffu));
    seed >>= 32;
  } while (seed != 0);
  uint32_t pool[kPool];
  uint32_t hash_const = kInitA;
  for (int i = 0; i < kPool; ++i) pool[i] = hashmix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0, hash_const);
  for (int src = 0; src < kPool; ++src)
    for (int dst = 0; dst < kPool; ++dst)
      if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hash_const));
  for (size_t src = kPool; src < entropy.size(); ++src)
    for (int dst = 0; dst < kPool; ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src], hash_const));
  std::vector<uint64_t> out(n_words64);
  uint32_t hash_b = kInitB;
  for (int i = 0; i < 2 * n_words64; ++i) {
    uint32_t value = pool[i % kPool];
    value ^= hash_b;
    hash_b *= kMultB;
    value *= hash_b;
    value ^= value >> kXShift;
    out[i / 2] |= static_cast<uint64_t>(value) << (32 * (i % 2));  // uint32 pairs viewed as uint64
  }
  return out;
}

constexpr unsigned __int128 kPcgMultiplier =
    (static_cast<unsigned __int128>(0x2360ED051FC65DA4ULL) << 64) | 0x4385DF649FCCF645ULL;

// numpy's sum of a contiguous float64 row: pairwise in blocks of 8 (umath loops), not left to right.
double pairwise_sum(const double* a, size_t n) {
  if (n < 8) {
    double res = 0.0;
    for (size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

std::vector<double> softmax(const std::vector<double>& scores) {
  const double top = *std::max_element(scores.begin(), scores.end());
  std::vector<double> e(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) e[i] = std::exp(scores[i] - top);
  const double total = pairwise_sum(e.data(), e.size());
  for (double& v : e) v /= total;
  return e;
}

}  // namespace

void SamplingConfig::validate() const {
  if (!(temperature > 0.0 && std::isfinite(temperature))) {
    throw InvalidGenerationConfigError("temperature must be a finite number > 0, got " + std::to_string(temperature) +
                                       "; for deterministic output use greedy decoding.");
  }
  if (top_k < 0) throw InvalidGenerationConfigError("top_k must be >= 0 (0 disables it), got " + std::to_string(top_k) + ".");
  if (!(top_p > 0.0 && top_p <= 1.0)) {
    throw InvalidGenerationConfigError("top_p must be in (0, 1] (1 disables it), got " + std::to_string(top_p) + ".");
  }
}

NumpyPCG64::NumpyPCG64(std::optional<uint64_t> seed) {
  uint64_t value = seed ? *seed : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  const std::vector<uint64_t> words = seed_sequence_state(value, 4);
  const unsigned __int128 init_state = (static_cast<unsigned __int128>(words[0]) << 64) | words[1];
  const unsigned __int128 init_seq = (static_cast<unsigned __int128>(words[2]) << 64) | words[3];
  state_ = 0;
  inc_ = (init_seq << 1) | 1;
  step();
  state_ += init_state;
  step();
}

void NumpyPCG64::step() { state_ = state_ * kPcgMultiplier + inc_; }

uint64_t NumpyPCG64::next_uint64() {
  step();
  const uint64_t xored = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (xored >> rot) | (xored << ((64 - rot) & 63));
}

double NumpyPCG64::next_double() { return static_cast<double>(next_uint64() >> 11) * (1.0 / 9007199254740992.0); }

std::vector<double> filter_logits(const float* logits, int vocab, const SamplingConfig& config) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> scores(logits, logits + vocab);
  for (double& s : scores) s /= config.temperature;
  if (config.top_k && config.top_k < vocab) {
    std::vector<double> copy = scores;
    std::nth_element(copy.begin(), copy.end() - config.top_k, copy.end());
    const double kth = *(copy.end() - config.top_k);
    for (double& s : scores)
      if (s < kth) s = neg_inf;
  }
  if (config.top_p < 1.0) {
    std::vector<int> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return -scores[a] < -scores[b]; });
    std::vector<double> sorted(vocab);
    for (int i = 0; i < vocab; ++i) sorted[i] = scores[order[i]];
    const std::vector<double> probs = softmax(sorted);
    double cumulative = 0.0;
    std::vector<bool> drop(vocab, false);
    for (int i = 0; i < vocab; ++i) {
      cumulative += probs[i];
      drop[order[i]] = (cumulative - probs[i]) >= config.top_p;  // the mass of the tokens ranked before it
    }
    for (int i = 0; i < vocab; ++i)
      if (drop[i]) scores[i] = neg_inf;
  }
  return scores;
}

Sampler::Sampler(const SamplingConfig& config) : config_(config), rng_(config.seed) { config_.validate(); }

std::vector<int64_t> Sampler::operator()(const float* logits, int batch, int vocab) {
  std::vector<int64_t> tokens(batch);
  for (int b = 0; b < batch; ++b) {
    const float* row = logits + static_cast<size_t>(b) * vocab;
    if (!config_.do_sample) {  // the first maximum, as numpy's argmax
      tokens[b] = std::max_element(row, row + vocab) - row;
      continue;
    }
    const std::vector<double> probs = softmax(filter_logits(row, vocab, config_));
    std::vector<double> cdf(vocab);
    std::partial_sum(probs.begin(), probs.end(), cdf.begin());
    const double draw = rng_.next_double() * cdf.back();
    const int64_t picked = std::count_if(cdf.begin(), cdf.end(), [&](double c) { return c < draw; });
    tokens[b] = std::min<int64_t>(picked, vocab - 1);
  }
  return tokens;
}

}  // namespace planforge
