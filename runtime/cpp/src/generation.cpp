#include "planforge/generation.hpp"

#include <algorithm>
#include <chrono>

namespace planforge {

int64_t CacheSlots::slot(int64_t position) const {
  if (!layout.rolling) {
    if (position >= layout.capacity) {
      throw PromptTooLongError("the KV cache holds " + std::to_string(layout.capacity) + " positions; position " +
                               std::to_string(position) + " does not fit. Use a shorter prompt or fewer new tokens.");
    }
    return position;
  }
  const int64_t window = layout.capacity - layout.sinks;
  return position < layout.sinks ? position : layout.sinks + (position - layout.sinks) % window;
}

int64_t CacheSlots::valid(int64_t written) const { return std::min<int64_t>(written, layout.capacity); }

void Generator::check_prompts(const std::vector<std::vector<int64_t>>& prompts) const {
  if (prompts.empty()) throw InvalidPromptError("no prompts were given.");
  const int limit = manifest_.dims.max_seq_len, vocab = manifest_.dims.vocab_size;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    if (p.empty()) throw InvalidPromptError("prompt " + std::to_string(i) + " is empty; give at least one token.");
    if (manifest_.streaming_slots && p.size() != prompts[0].size()) {
      throw InvalidPromptError("this streaming model keeps the first tokens of every row as attention sinks, so its "
                               "batches cannot be left-padded: give prompts of equal token length, or run them one "
                               "at a time.");
    }
    if (!manifest_.streaming_slots && static_cast<int>(p.size()) > limit) {
      throw PromptTooLongError("prompt " + std::to_string(i) + " has " + std::to_string(p.size()) +
                               " tokens but the model was exported with max_seq_len " + std::to_string(limit) + ".");
    }
    for (int64_t t : p) {
      if (t < 0 || t >= vocab) {
        throw InvalidPromptError("prompt " + std::to_string(i) + " holds token ids outside the vocabulary [0, " +
                                 std::to_string(vocab) + ").");
      }
    }
  }
}

GenerationResult Generator::generate(const std::vector<std::vector<int64_t>>& prompts,
                                     const GenerationConfig& config,
                                     const std::function<void(int, int64_t)>& on_token) {
  check_prompts(prompts);
  if (config.max_new_tokens < 1) {
    throw InvalidGenerationConfigError("max_new_tokens must be >= 1, got " + std::to_string(config.max_new_tokens) + ".");
  }
  std::set<int64_t> stops(config.stop_token_ids.begin(), config.stop_token_ids.end());
  if (!config.ignore_eos) stops.insert(manifest_.eos_token_ids.begin(), manifest_.eos_token_ids.end());
  const int64_t pad = manifest_.pad_token_id.value_or(0);
  const int batch = static_cast<int>(prompts.size());
  size_t width = 0;
  for (const auto& p : prompts) width = std::max(width, p.size());

  // Left padding; positions count the real tokens (0 under the padding).
  std::vector<int64_t> ids(batch * width, pad), mask(batch * width, 0), positions(batch * width, 0);
  std::vector<int64_t> last_position(batch);
  for (int b = 0; b < batch; ++b) {
    const size_t offset = width - prompts[b].size();
    for (size_t s = 0; s < prompts[b].size(); ++s) {
      ids[b * width + offset + s] = prompts[b][s];
      mask[b * width + offset + s] = 1;
      positions[b * width + offset + s] = static_cast<int64_t>(s);
    }
    last_position[b] = static_cast<int64_t>(prompts[b].size()) - 1;
  }
  Sampler sample(config.sampling);
  const int slots = manifest_.streaming_slots.value_or(0);
  const int first = slots ? std::min<int>(static_cast<int>(width), slots) : static_cast<int>(width);
  using Clock = std::chrono::steady_clock;
  const auto prefill_start = Clock::now();
  backend_.reset(batch);
  auto slice = [&](const std::vector<int64_t>& v, int from, int to) {  // columns [from, to) of each row
    std::vector<int64_t> out;
    for (int b = 0; b < batch; ++b) out.insert(out.end(), v.begin() + b * width + from, v.begin() + b * width + to);
    return out;
  };
  std::vector<float> logits = backend_.forward(slice(ids, 0, first), slice(mask, 0, first),
                                               slice(positions, 0, first), batch, first, first);
  int mask_cols = first;
  // The step mask: every column seen, or a streaming model's S + W slots at most, plus the new token.
  auto next_mask_cols = [&](int cols) { return (slots ? std::min(cols, slots) : cols) + 1; };
  std::vector<int64_t> full_mask = slice(mask, 0, first);
  auto grow_mask = [&](int cols) {  // (batch, cols): the kept columns of the last mask, then a 1
    std::vector<int64_t> grown;
    const int old_cols = mask_cols, keep = cols - 1;
    for (int b = 0; b < batch; ++b) {
      grown.insert(grown.end(), full_mask.begin() + b * old_cols + (old_cols - keep), full_mask.begin() + (b + 1) * old_cols);
      grown.push_back(1);
    }
    full_mask = grown;
    mask_cols = cols;
  };
  for (int t = first; t < static_cast<int>(width); ++t) {  // a streaming prompt past its slots: one token a step
    grow_mask(next_mask_cols(mask_cols));
    std::vector<int64_t> step_ids(batch), step_pos(batch);
    for (int b = 0; b < batch; ++b) step_ids[b] = ids[b * width + t], step_pos[b] = positions[b * width + t];
    logits = backend_.forward(step_ids, full_mask, step_pos, batch, 1, mask_cols);
  }

  GenerationResult result{std::vector<std::vector<int64_t>>(batch), std::vector<std::string>(batch)};
  const auto decode_start = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(decode_start - prefill_start).count();
  const int vocab = manifest_.dims.vocab_size, limit = manifest_.dims.max_seq_len;
  while (true) {
    const std::vector<int64_t> next = sample(logits.data(), batch, vocab);
    bool all_done = true;
    for (int b = 0; b < batch; ++b) {
      if (!result.finish_reasons[b].empty()) continue;
      result.tokens[b].push_back(next[b]);
      if (on_token) on_token(b, next[b]);
      if (stops.count(next[b])) result.finish_reasons[b] = "stop";
      else if (static_cast<int>(result.tokens[b].size()) >= config.max_new_tokens) result.finish_reasons[b] = "length";
      else if (!slots && mask_cols + 1 > limit) result.finish_reasons[b] = "max_seq_len";
      all_done = all_done && !result.finish_reasons[b].empty();
    }
    if (all_done) break;
    std::vector<int64_t> feed(batch), step_pos(batch);
    for (int b = 0; b < batch; ++b) {  // finished rows keep stepping on padding no one reads
      feed[b] = result.finish_reasons[b].empty() ? next[b] : pad;
      step_pos[b] = ++last_position[b];
    }
    grow_mask(next_mask_cols(mask_cols));
    logits = backend_.forward(feed, full_mask, step_pos, batch, 1, mask_cols);
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
  return result;
}

}  // namespace planforge
