#include "planforge/in_place.hpp"

namespace planforge {

void InPlaceBackend::reset(int batch) {
  batch_ = batch;
  lengths_.assign(batch, 0);
  seen_ = 0;
  reset_buffers(batch);
}

std::vector<float> InPlaceBackend::forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                                           const std::vector<int64_t>& positions, int batch, int seq, int mask_cols) {
  std::vector<int> real(batch, 0);
  bool unpadded = true;
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < seq; ++s) real[b] += mask[b * mask_cols + mask_cols - seq + s] != 0;
    unpadded = unpadded && real[b] == seq;
  }
  std::vector<float> logits;
  if (seq == 1 || (seen_ == 0 && unpadded)) {  // one batched run: decode, or an unpadded prefill
    logits = step(ids.data(), positions.data(), lengths_.data(), batch, seq, 0);
  } else if (seen_ == 0) {  // left-padded prefill: each row alone, its real tokens only
    for (int b = 0; b < batch; ++b) {
      const int64_t* row_ids = ids.data() + b * seq + (seq - real[b]);
      const int64_t* row_pos = positions.data() + b * seq + (seq - real[b]);
      const std::vector<float> row = step(row_ids, row_pos, lengths_.data() + b, 1, real[b], b);
      logits.insert(logits.end(), row.begin(), row.end());
    }
  } else {  // new tokens over a filled cache: one decode step each, every token written
    for (int s = 0; s < seq; ++s) {
      std::vector<int64_t> column(batch), column_pos(batch);
      std::vector<int32_t> at(batch);
      for (int b = 0; b < batch; ++b) {
        column[b] = ids[b * seq + s], column_pos[b] = positions[b * seq + s], at[b] = lengths_[b] + s;
      }
      logits = step(column.data(), column_pos.data(), at.data(), batch, 1, 0);
    }
    real.assign(batch, seq);
  }
  for (int b = 0; b < batch; ++b) lengths_[b] += real[b];
  seen_ = mask_cols;
  return logits;
}

}  // namespace planforge
