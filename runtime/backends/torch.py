"""The torch backend: a compiled model's ``model.onnx`` executed node by node with torch.

It runs the same file ONNX Runtime (portable) or TensorRT (lowered) would take,
through ``runtime/torch_graph``: standard ops as their torch equivalents, and
``planforge`` plugin ops through ``torch.ops.planforge.*`` (the reference on the
CPU, the Triton kernel on CUDA). On the portable graph the cache contract is the
ONNX one (``present = concat(past, new)``), held as torch tensors on the device
between steps. It is the CPU oracle for the lowered graphs, and runs bf16
exports, which ONNX Runtime's Python API cannot feed.

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
from planforge.manifest import Manifest
from planforge.runtime.backends.base import Backend
from planforge.runtime.backends.registry import register_backend

_TORCH_KV_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class TorchKVCache:
    values: list  # [key_0, value_0, ...] torch tensors on the device, each (B, Hkv, P, D)
    length: int


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device cuda needs an NVIDIA GPU and a CUDA build of torch (this is torch {torch.__version__}, "
            "which sees no GPU). Use --device cpu, or install torch with CUDA on a GPU machine; the plugin kernels "
            "also need `pip install triton`.")


@register_backend("torch", targets=("portable",), devices=("cpu", "cuda"), requires=("torch",),
                  install="`pip install torch==2.13.0` (CPU), or a CUDA build of torch with triton for --device cuda.")
class TorchBackend(Backend):
    """A compiled model directory executed by torch on ``device``."""

    def __init__(self, model_dir: Path, manifest: Manifest, device: str = "cpu", threads: Optional[int] = None):
        import torch

        from planforge.runtime.torch_graph.graph import TorchGraph

        _check_device(device)
        self.model_dir, self.manifest, self.device = Path(model_dir), manifest, device
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        model_path = self.model_dir / constants.MODEL_FILE
        if not model_path.is_file():
            raise CompiledModelError(f"{self.model_dir} has no {constants.MODEL_FILE}. Re-export the model.")
        self._graph = TorchGraph(model_path, device)
        self._kv_dtype = getattr(torch, _TORCH_KV_DTYPES[manifest.dtype])
        self._past_names = [name for i in range(manifest.dims.num_layers)
                            for name in (constants.past_key(i), constants.past_value(i))]

    def empty_cache(self, batch_size: int) -> TorchKVCache:
        import torch

        d = self.manifest.dims
        empty = torch.zeros(batch_size, d.num_kv_heads, 0, d.head_dim, dtype=self._kv_dtype, device=self.device)
        return TorchKVCache(values=[empty] * len(self._past_names), length=0)

    def repeat_cache(self, cache: TorchKVCache, times: int) -> TorchKVCache:
        return TorchKVCache([v.repeat_interleave(times, dim=0) for v in cache.values], cache.length)

    def forward(self, input_ids, attention_mask, position_ids, cache: TorchKVCache):
        import torch

        assert input_ids.shape == position_ids.shape, (input_ids.shape, position_ids.shape)
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)  # noqa: E731
        feeds = {constants.INPUT_IDS: as_tensor(input_ids), constants.ATTENTION_MASK: as_tensor(attention_mask),
                 constants.POSITION_IDS: as_tensor(position_ids), **dict(zip(self._past_names, cache.values))}
        logits, *presents = self._graph.run(feeds)
        # P + S positions, or at most S + W for a streaming model (sinks + rolling window).
        return logits.float().cpu().numpy(), TorchKVCache(presents, presents[0].shape[2])
