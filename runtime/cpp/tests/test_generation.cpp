#include <gtest/gtest.h>

#include "planforge/generation.hpp"

using namespace planforge;

namespace {

// Logits that put all mass on (last token + 1) % vocab, and records every call's shapes.
class CountingBackend : public StepBackend {
 public:
  explicit CountingBackend(int vocab) : vocab_(vocab) {}
  void reset(int batch) override { resets.push_back(batch); }
  std::vector<float> forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                             const std::vector<int64_t>& positions, int batch, int seq, int mask_cols) override {
    EXPECT_EQ(ids.size(), static_cast<size_t>(batch * seq));
    EXPECT_EQ(positions.size(), ids.size());
    EXPECT_EQ(mask.size(), static_cast<size_t>(batch * mask_cols));
    calls.push_back({seq, mask_cols});
    last_positions.assign(positions.begin(), positions.end());
    std::vector<float> logits(batch * vocab_, 0.f);
    for (int b = 0; b < batch; ++b) logits[b * vocab_ + (ids[b * seq + seq - 1] + 1) % vocab_] = 10.f;
    return logits;
  }
  std::vector<int> resets;
  std::vector<std::pair<int, int>> calls;  // (seq, mask_cols)
  std::vector<int64_t> last_positions;

 private:
  int vocab_;
};

Manifest tiny(int max_seq_len = 16, std::optional<int> slots = std::nullopt) {
  Manifest m;
  m.dims = Dims{2, 8, 2, 1, 4, 10, max_seq_len};
  m.eos_token_ids = {9};
  m.pad_token_id = 0;
  m.streaming_slots = slots;
  return m;
}

}  // namespace

TEST(Generator, StopsOnEosAndLengthPerRowAndPadsFinishedRows) {
  Manifest m = tiny();
  CountingBackend backend(10);
  GenerationConfig config;
  config.max_new_tokens = 5;
  auto result = Generator(m, backend).generate({{5, 6}, {1}}, config);
  EXPECT_EQ(result.tokens[0], (std::vector<int64_t>{7, 8, 9}));  // 9 is the eos token
  EXPECT_EQ(result.finish_reasons[0], "stop");
  EXPECT_EQ(result.tokens[1], (std::vector<int64_t>{2, 3, 4, 5, 6}));
  EXPECT_EQ(result.finish_reasons[1], "length");
  EXPECT_EQ(backend.resets, (std::vector<int>{2}));
  EXPECT_EQ(backend.calls.front(), std::make_pair(2, 2));  // a left-padded prefill of width 2
  EXPECT_EQ(backend.calls.back(), std::make_pair(1, 6));   // the mask grows by one column a step
  EXPECT_EQ(backend.last_positions, (std::vector<int64_t>{5, 4}));  // positions count the real tokens
}

TEST(Generator, MaxSeqLenEndsAFullCacheModel) {
  Manifest m = tiny(4);
  CountingBackend backend(10);
  GenerationConfig config;
  config.max_new_tokens = 50;
  config.ignore_eos = true;
  auto result = Generator(m, backend).generate({{1, 2}}, config);
  EXPECT_EQ(result.finish_reasons[0], "max_seq_len");
  EXPECT_EQ(result.tokens[0].size(), 3u);
}

TEST(Generator, AStreamingModelRunsPastItsSlotsWithACappedMask) {
  Manifest m = tiny(4, 3);
  CountingBackend backend(10);
  GenerationConfig config;
  config.max_new_tokens = 8;
  config.ignore_eos = true;
  auto result = Generator(m, backend).generate({{1, 2, 3, 4, 5}}, config);  // longer than its 3 slots
  EXPECT_EQ(result.finish_reasons[0], "length");
  EXPECT_EQ(backend.calls.front(), std::make_pair(3, 3));  // the first step fills the slots
  for (size_t i = 1; i < backend.calls.size(); ++i) EXPECT_EQ(backend.calls[i], std::make_pair(1, 4));
}

TEST(Generator, RefusesBadPrompts) {
  Manifest m = tiny(4);
  CountingBackend backend(10);
  Generator g(m, backend);
  EXPECT_THROW(g.check_prompts({}), InvalidPromptError);
  EXPECT_THROW(g.check_prompts({{}}), InvalidPromptError);
  EXPECT_THROW(g.check_prompts({{1, 2, 3, 4, 5}}), PromptTooLongError);
  EXPECT_THROW(g.check_prompts({{10}}), InvalidPromptError);  // outside the vocabulary
  Manifest streaming = tiny(4, 3);
  EXPECT_THROW(Generator(streaming, backend).check_prompts({{1, 2}, {3}}), InvalidPromptError);
}

TEST(CacheSlots, MatchKVCacheUpdate) {
  CacheSlots linear{{8, false, 0}}, window{{4, true, 0}}, sinks{{6, true, 2}};
  EXPECT_EQ(linear.slot(7), 7);
  EXPECT_THROW(linear.slot(8), PromptTooLongError);
  EXPECT_EQ(window.slot(9), 1);
  EXPECT_EQ(sinks.slot(1), 1);   // a sink keeps its slot
  EXPECT_EQ(sinks.slot(2), 2);
  EXPECT_EQ(sinks.slot(6), 2);   // 2 + (6 - 2) % 4
  EXPECT_EQ(sinks.slot(9), 5);
  EXPECT_EQ(sinks.valid(100), 6);
  EXPECT_EQ(linear.valid(3), 3);
}
