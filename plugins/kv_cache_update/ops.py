"""``torch.ops.planforge.kv_cache_update``: in place; CUDA runs Triton, CPU the reference."""

from __future__ import annotations

from typing import Optional

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::kv_cache_update", mutates_args=("k_cache", "v_cache"))
def kv_cache_update(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                    positions: torch.Tensor, cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                    rolling: bool = False, sinks: int = 0) -> None:
    if use_kernel(k_new):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        kernel.kv_cache_update(k_cache, v_cache, k_new, v_new, positions, cos, sin, rolling, sinks)
    else:
        reference.kv_cache_update(k_cache, v_cache, k_new, v_new, positions, cos, sin, rolling, sinks)


@kv_cache_update.register_fake
def _(k_cache, v_cache, k_new, v_new, positions, cos=None, sin=None, rolling=False, sinks=0):
    torch._check(k_new.dim() == 4 and k_cache.shape[:2] == k_new.shape[:2])
    return None
