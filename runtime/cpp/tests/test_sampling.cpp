#include <gtest/gtest.h>

#include <cmath>

#include "planforge/sampling.hpp"

using namespace planforge;

TEST(NumpyPCG64, ReproducesNumpysDefaultRng) {
  // numpy 2: default_rng(0).bit_generator.random_raw(3), default_rng(0).random(2), and a seed of two words.
  NumpyPCG64 rng(0);
  EXPECT_EQ(rng.next_uint64(), 0xa30febcfd9c2825fULL);
  EXPECT_EQ(rng.next_uint64(), 0x4510bdf882d9d721ULL);
  EXPECT_EQ(rng.next_uint64(), 0x0a7d3da94ecde8b8ULL);
  NumpyPCG64 wide((1ULL << 40) + 5);
  EXPECT_EQ(wide.next_uint64(), 0x01369aef039fedebULL);
  EXPECT_EQ(wide.next_uint64(), 0x5f61b40473314316ULL);
  NumpyPCG64 again(0);
  EXPECT_DOUBLE_EQ(again.next_double(), 0.6369616873214543);
  EXPECT_DOUBLE_EQ(again.next_double(), 0.2697867137638703);
}

TEST(Sampler, GreedyTakesTheFirstMaximum) {
  Sampler greedy(SamplingConfig{});
  const float logits[] = {0.f, 3.f, 3.f, 1.f, 5.f, 5.f, 0.f, 0.f};
  EXPECT_EQ(greedy(logits, 2, 4), (std::vector<int64_t>{1, 0}));
}

TEST(Sampler, TopKAndTopPDropWhatPythonDrops) {
  SamplingConfig config{true, 1.0, 2, 1.0, 7};
  const float logits[] = {1.f, 4.f, 3.f, 2.f};
  auto scores = filter_logits(logits, 4, config);
  EXPECT_TRUE(std::isinf(scores[0]) && std::isinf(scores[3]));
  EXPECT_EQ(scores[1], 4.0);
  config = SamplingConfig{true, 1.0, 0, 0.5, 7};  // the first token already holds more than half the mass
  scores = filter_logits(logits, 4, config);
  EXPECT_EQ(scores[1], 4.0);
  EXPECT_TRUE(std::isinf(scores[0]) && std::isinf(scores[2]) && std::isinf(scores[3]));
}

TEST(Sampler, RefusesBadSettingsWithPythonsMessages) {
  EXPECT_THROW(Sampler(SamplingConfig{true, 0.0, 0, 1.0, 1}), InvalidGenerationConfigError);
  EXPECT_THROW(Sampler(SamplingConfig{true, NAN, 0, 1.0, 1}), InvalidGenerationConfigError);
  EXPECT_THROW(Sampler(SamplingConfig{true, 1.0, -1, 1.0, 1}), InvalidGenerationConfigError);
  EXPECT_THROW(Sampler(SamplingConfig{true, 1.0, 0, 0.0, 1}), InvalidGenerationConfigError);
}
