"""``torch.ops.planforge.sparse_heads_decode``: CUDA runs Triton, CPU the reference."""

from __future__ import annotations

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::sparse_heads_decode", mutates_args=("k_cache", "v_cache"))
def sparse_heads_decode(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        positions: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    args = (x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, positions, groups)
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        return kernel.sparse_heads_decode(*args)
    return reference.sparse_heads_decode(*args)


@sparse_heads_decode.register_fake
def _(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, positions, groups):
    return torch.empty_like(x)  # (B, d)
