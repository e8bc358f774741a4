"""The torch backend: a compiled model's ``model.onnx`` executed node by node with torch.

It runs the same file ONNX Runtime (portable) or TensorRT (lowered) would take,
through ``runtime/torch_graph``: standard ops as their torch equivalents, and
``planforge`` plugin ops through ``torch.ops.planforge.*`` (the reference on the
CPU, the Triton kernel on CUDA). It also runs bf16 exports, which ONNX Runtime's
Python API cannot feed.

Two cache contracts, from the manifest:

- portable graphs: ``present = concat(past, new)``, the presents kept as torch
  tensors on the device between steps;
- lowered graphs (``build --target torch``, and the TensorRT-prepared graph of an
  engine directory): preallocated buffers written in place (``in_place.py``).

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
from planforge.runtime.backends.in_place import InPlaceContract, InPlaceKVCache
from planforge.runtime.backends.registry import register_backend

@dataclass
class TorchKVCache:
    values: list  # [key_0, value_0, ...] torch tensors on the device, each (B, Hkv, P, D)
    length: int


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


@register_backend("torch", targets=("portable", "torch", "tensorrt"), default_for=("torch",), devices=("cpu", "cuda"), requires=("torch",),
                  install="`pip install torch==2.13.0` (CPU), or a CUDA build of torch with triton for --device cuda.")
class TorchBackend(InPlaceContract, Backend):
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
            return self._empty_in_place(batch_size)
        empty = torch.zeros(batch_size, d.num_kv_heads, 0, d.head_dim, dtype=self._kv_dtype, device=self.device)
        return TorchKVCache(values=[empty] * len(self._cache_names), length=0)

    def repeat_cache(self, cache, times: int):
        if isinstance(cache, InPlaceKVCache):
            return self._repeat_in_place(cache, times)
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
        self._check_capacity(lengths, ids.shape[1])
        feeds = {constants.INPUT_IDS: self._tensor(ids), constants.POSITION_IDS: self._tensor(positions),
                 constants.PAST_LENGTHS: self._tensor(lengths, np.int32), **dict(zip(self._cache_names, buffers))}
        run = self._graphed if self._graphed is not None and ids.shape[1] == 1 else self._graph.run
        return _to_host(run(feeds)[0], last_only)
