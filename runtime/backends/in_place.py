"""The in-place cache contract, run the same way by every backend whose graph writes its cache in place:
the plugin graph (``build --target torch`` and ``tensorrt``) and the graph lowered onto ONNX Runtime's
``GroupQueryAttention`` (``optimize --target onnxruntime``, its buffers shared by past and present).

One preallocated buffer per layer and K/V, which ``KVCacheUpdate`` writes in place, plus the valid
length of each sequence (``past_lengths``). The fused ops take no padding mask, so a left-padded
prefill runs row by row on views of the rows' buffers, and several new tokens over a filled cache
run one decode step each (exact; the multiple-choice path). A backend supplies ``_step``: one run of
its graph or engine over the given buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planforge.errors import PromptTooLongError


@dataclass
class InPlaceKVCache:
    """The lowered contract's cache: ``buffers`` (B, Hkv, C_i, D) per layer, written in place."""

    buffers: list  # [key_0, value_0, ...]
    lengths: np.ndarray  # (B,) tokens each sequence has written: the absolute slot of its next one
    length: int  # attention-mask columns seen so far (the caller's P), padding included


class InPlaceContract:
    """Mixin: the cache calls of ``Backend`` for the lowered contract, over the backend's ``_step``.

    Needs ``manifest``, ``device``, ``_kv_dtype`` (the buffers' dtype) and ``_streaming_slots`` (None, or a
    streaming model's S + W)."""

    def _step(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, buffers: list,
              last_only: bool = False) -> np.ndarray:
        """One run: writes the new tokens at slots ``lengths`` (+ s) of ``buffers``; logits (B, S, V)."""
        raise NotImplementedError

    def _cache_capacities(self) -> list[int]:
        """Slots of each layer's buffers: the lowered contract's ``kv_cache`` entries."""
        return [layer["capacity"] for layer in self.manifest.io["kv_cache"]]

    def _zeros(self, shape: tuple) -> object:
        """A zeroed cache buffer (torch on ``self.device`` here; a numpy backend overrides it)."""
        import torch

        return torch.zeros(*shape, dtype=self._kv_dtype, device=self.device)

    @staticmethod
    def _repeat_rows(buffer, times: int):
        return buffer.repeat_interleave(times, dim=0)

    def _empty_in_place(self, batch_size: int) -> InPlaceKVCache:
        d = self.manifest.dims
        buffers = [self._zeros((batch_size, d.num_kv_heads, capacity, d.head_dim))
                   for capacity in self._cache_capacities() for _ in (0, 1)]
        return InPlaceKVCache(buffers, np.zeros(batch_size, np.int64), 0)

    def _repeat_in_place(self, cache: InPlaceKVCache, times: int) -> InPlaceKVCache:
        return InPlaceKVCache([self._repeat_rows(b, times) for b in cache.buffers],
                              np.repeat(cache.lengths, times), cache.length)

    def _check_capacity(self, lengths: np.ndarray, new_tokens: int) -> None:
        capacity = self.manifest.dims.max_seq_len
        if self._streaming_slots is None and int(lengths.max()) + new_tokens > capacity:
            raise PromptTooLongError(f"the KV cache holds {capacity} positions (max_seq_len); this step needs "
                                     f"{int(lengths.max()) + new_tokens}. Use a shorter prompt or fewer new tokens.")

    def _forward_in_place(self, ids, mask, positions, cache: InPlaceKVCache, last_only: bool):
        B, S = ids.shape
        new = mask[:, cache.length:]  # (B, S): 1 for a real new token
        if S == 1 or (cache.length == 0 and new.all()):  # one batched run: decode, or an unpadded prefill
            logits = self._step(ids, positions, cache.lengths, cache.buffers, last_only)
        elif cache.length == 0:  # left-padded prefill: each row alone, on views of its buffers
            logits = np.zeros((B, 1 if last_only else S, self.manifest.dims.vocab_size), np.float32)
            for b in range(B):
                real = new[b].astype(bool)
                rows = [buffer[b:b + 1] for buffer in cache.buffers]
                row = self._step(ids[b:b + 1, real], positions[b:b + 1, real], cache.lengths[b:b + 1], rows,
                                 last_only)[0]
                logits[b, slice(None) if last_only else real] = row  # left padding: the last column is real
        else:  # new tokens over a filled cache: one decode step each
            steps = [self._step(ids[:, t:t + 1], positions[:, t:t + 1], cache.lengths + t, cache.buffers)
                     for t in range(S)]
            logits = steps[-1] if last_only else np.concatenate(steps, axis=1)
            # every token is written (a right-padded continuation's padding comes after its real tokens)
            return logits, InPlaceKVCache(cache.buffers, cache.lengths + S, self._mask_columns(cache.length + S))
        lengths = cache.lengths + (new[:, 0] if S == 1 else new.sum(axis=1))
        return logits, InPlaceKVCache(cache.buffers, lengths, self._mask_columns(cache.length + S))

    def _mask_columns(self, seen: int) -> int:
        """The next step's past mask width: every token seen, or a streaming model's S + W slots at most."""
        return seen if self._streaming_slots is None else min(seen, self._streaming_slots)
