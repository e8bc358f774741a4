// The in-place cache contract of planforge/runtime/backends/in_place.py, shared by every C++ backend whose graph
// writes its KV cache in place: the TensorRT engine (KVCacheUpdate) and the graph lowered onto ONNX Runtime's
// GroupQueryAttention (its past and present bound to one buffer). One preallocated buffer per layer and K/V, plus
// each sequence's valid length. The graphs take no padding mask, so a left-padded prefill runs row by row on each
// row's slice of the buffers, and several new tokens over a filled cache run one decode step each.
#pragma once

#include <cstdint>
#include <vector>

#include "planforge/generation.hpp"

namespace planforge {

class InPlaceBackend : public StepBackend {
 public:
  void reset(int batch) final;
  std::vector<float> forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask,
                             const std::vector<int64_t>& positions, int batch, int seq, int mask_cols) final;

 protected:
  // Fresh zeroed buffers for ``batch`` sequences.
  virtual void reset_buffers(int batch) = 0;
  // One run over rows [first_row, first_row + rows) of the buffers: writes the ``seq`` new tokens of each row at
  // slots lengths[b] (+ s); returns the last position's logits, rows x vocab.
  virtual std::vector<float> step(const int64_t* ids, const int64_t* positions, const int32_t* lengths, int rows,
                                  int seq, int first_row) = 0;
  int batch_ = 0;

 private:
  std::vector<int32_t> lengths_;  // tokens each sequence has written: the slot of its next one
  int seen_ = 0;                  // attention-mask columns seen so far, padding included
};

}  // namespace planforge
