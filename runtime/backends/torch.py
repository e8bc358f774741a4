"""The torch backend: a compiled model's ``model.onnx`` executed node by node with torch.

It runs the same file ONNX Runtime (portable) or TensorRT (lowered) would take,
through ``runtime/torch_graph``: standard ops as their torch equivalents, and
``planforge`` plugin ops through ``torch.ops.planforge.*`` (the reference on the
CPU, the Triton kernel on CUDA). It also runs bf16 exports, which ONNX Runtime's
Python API cannot feed.

Two cache contracts, from the manifest:

- portable graphs: ``present = concat(past, new)``, the presents kept as torch
  tensors on the device between steps;
- lowered graphs (``build --target torch``): one preallocated buffer per layer
  that ``KVCacheUpdate`` writes in place, plus the valid length of each sequence.
  The fused ops take no padding mask, so a left-padded prefill runs row by row
  on views of the rows' buffers, and several new tokens over a filled cache run
  one decode step each (exact; the multiple-choice path).

torch is imported when a model is opened, so ``planforge.runtime`` still imports
without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.errors import BackendUnavailableError, CompiledModelError
from planforge.manifest import Manifest, check_graph_inputs
from planforge.runtime.backends.base import Backend
from planforge.runtime.backends.registry import register_backend

@dataclass
class TorchKVCache:
    values: list  # [key_0, value_0, ...] torch tensors on the device, each (B, Hkv, P, D)
    length: int


@dataclass
class InPlaceKVCache:
    """The lowered contract's cache: ``buffers`` (B, Hkv, C_i, D) per layer, written in place."""

    buffers: list  # [key_0, value_0, ...]
    lengths: np.ndarray  # (B,) tokens each sequence has written: the absolute slot of its next one
    length: int  # attention-mask columns seen so far (the caller's P), padding included


def _to_host(logits, last_only: bool) -> np.ndarray:
    """(B, S, V) device logits -> float32 numpy, only the last position's when that is all the caller reads."""
    return (logits[:, -1:] if last_only else logits).float().cpu().numpy()


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device cuda needs an NVIDIA GPU and a CUDA build of torch (this is torch {torch.__version__}, "
            "which sees no GPU). Use --device cpu, or install torch with CUDA on a GPU machine; the plugin kernels "
            "also need `pip install triton`.")


@register_backend("torch", targets=("portable", "torch"), default_for=("torch",), devices=("cpu", "cuda"), requires=("torch",),
                  install="`pip install torch==2.13.0` (CPU), or a CUDA build of torch with triton for --device cuda.")
class TorchBackend(Backend):
    """A compiled model directory executed by torch on ``device``."""

    def __init__(self, model_dir: Path, manifest: Manifest, device: str = "cpu", threads: Optional[int] = None,
                 cuda_graphs: bool = True):
        import torch

        from planforge.runtime.torch_graph.graph import TorchGraph

        _check_device(device)
        self.model_dir, self.manifest, self.device = Path(model_dir), manifest, device
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        model_path = self.model_dir / constants.MODEL_FILE
        if not model_path.is_file():
            raise CompiledModelError(f"{self.model_dir} has no {constants.MODEL_FILE}. Re-export the model.")
        if manifest.plugin_ops:
            from planforge.plugins.registry import check_op_versions

            check_op_versions(manifest.plugin_ops)
        if "kv_cache" in manifest.io and manifest.io.get("version") != constants.LOWERED_IO_VERSION:
            raise CompiledModelError(
                f"{self.model_dir} was lowered with I/O contract version {manifest.io.get('version')}; this planforge "
                f"runs version {constants.LOWERED_IO_VERSION}. Rebuild it: `planforge build "
                f"{manifest.source.get('portable_model', 'PORTABLE_MODEL')} -o OUT --target torch`.")
        self._graph = TorchGraph(model_path, device)
        check_graph_inputs(manifest, self._graph.input_shapes, self.model_dir)
        self._kv_dtype = getattr(torch, manifest.kv_numpy_dtype)  # the same names in torch
        self._in_place = "kv_cache" in manifest.io
        # A streaming model's cache rolls over its S + W slots: any length runs, the mask covers what it holds.
        self._streaming_slots = manifest.streaming["cache_slots"] if manifest.streaming else None
        self._graphed = None  # decode steps of the lowered contract on CUDA replay a captured graph
        # fp16/bf16 only: float32 runs the ops' torch references, whose checks read values on the host
        if self._in_place and device == "cuda" and cuda_graphs and manifest.dtype in ("fp16", "bf16"):
            from planforge.runtime.torch_graph.cuda_graph import GraphedSteps

            self._graphed = GraphedSteps(self._graph.run, (constants.INPUT_IDS, constants.POSITION_IDS,
                                                           constants.PAST_LENGTHS))
        n = manifest.dims.num_layers
        self._cache_names = [name for i in range(n) for name in (
            (constants.cache_key(i), constants.cache_value(i)) if self._in_place
            else (constants.past_key(i), constants.past_value(i)))]

    def _tensor(self, array, dtype=np.int64):
        import torch

        return torch.as_tensor(np.ascontiguousarray(array, dtype=dtype), device=self.device)

    def empty_cache(self, batch_size: int):
        import torch

        d = self.manifest.dims
        if self._in_place:
            buffers = [torch.zeros(batch_size, d.num_kv_heads, layer["capacity"], d.head_dim, dtype=self._kv_dtype,
                                   device=self.device) for layer in self.manifest.io["kv_cache"] for _ in (0, 1)]
            return InPlaceKVCache(buffers, np.zeros(batch_size, np.int64), 0)
        empty = torch.zeros(batch_size, d.num_kv_heads, 0, d.head_dim, dtype=self._kv_dtype, device=self.device)
        return TorchKVCache(values=[empty] * len(self._cache_names), length=0)

    def repeat_cache(self, cache, times: int):
        if isinstance(cache, InPlaceKVCache):
            return InPlaceKVCache([b.repeat_interleave(times, dim=0) for b in cache.buffers],
                                  np.repeat(cache.lengths, times), cache.length)
        return TorchKVCache([v.repeat_interleave(times, dim=0) for v in cache.values], cache.length)

    def forward(self, input_ids, attention_mask, position_ids, cache, last_only: bool = False):
        assert input_ids.shape == position_ids.shape, (input_ids.shape, position_ids.shape)
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
        if self._in_place:
            return self._forward_in_place(np.asarray(input_ids), np.asarray(attention_mask),
                                          np.asarray(position_ids), cache, last_only)
        feeds = {constants.INPUT_IDS: self._tensor(input_ids), constants.ATTENTION_MASK: self._tensor(attention_mask),
                 constants.POSITION_IDS: self._tensor(position_ids), **dict(zip(self._cache_names, cache.values))}
        logits, *presents = self._graph.run(feeds)
        # P + S positions, or at most S + W for a streaming model (sinks + rolling window).
        return _to_host(logits, last_only), TorchKVCache(presents, presents[0].shape[2])

    # ---- the lowered contract ------------------------------------------------------------------
    def _step(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, buffers: list,
              last_only: bool = False) -> np.ndarray:
        """One graph run: writes the new tokens at slots ``lengths`` (+ s) of ``buffers``; logits (B, S, V)."""
        capacity = self.manifest.dims.max_seq_len
        if self._streaming_slots is None and int(lengths.max()) + ids.shape[1] > capacity:
            from planforge.errors import PromptTooLongError

            raise PromptTooLongError(f"the KV cache holds {capacity} positions (max_seq_len); this step needs "
                                     f"{int(lengths.max()) + ids.shape[1]}. Use a shorter prompt or fewer new tokens.")
        feeds = {constants.INPUT_IDS: self._tensor(ids), constants.POSITION_IDS: self._tensor(positions),
                 constants.PAST_LENGTHS: self._tensor(lengths, np.int32), **dict(zip(self._cache_names, buffers))}
        run = self._graphed if self._graphed is not None and ids.shape[1] == 1 else self._graph.run
        return _to_host(run(feeds)[0], last_only)

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
        lengths = cache.lengths + new.sum(axis=1)
        return logits, InPlaceKVCache(cache.buffers, lengths, self._mask_columns(cache.length + S))

    def _mask_columns(self, seen: int) -> int:
        """The next step's past mask width: every token seen, or a streaming model's S + W slots at most."""
        return seen if self._streaming_slots is None else min(seen, self._streaming_slots)
