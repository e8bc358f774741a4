"""``torch.ops.planforge.sparse_heads_decode``: CUDA runs Triton, CPU the reference."""

from __future__ import annotations

from typing import Optional

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::sparse_heads_decode", mutates_args=())
def sparse_heads_decode(x: torch.Tensor, w_q: torch.Tensor, w_o: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, seq_lens: torch.Tensor, heads: torch.Tensor,
                        b_q: Optional[torch.Tensor] = None, cos: Optional[torch.Tensor] = None,
                        sin: Optional[torch.Tensor] = None, scale: float = 0.0) -> torch.Tensor:
    args = (x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q, cos, sin, scale)
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        return kernel.sparse_heads_decode(*args)
    return reference.sparse_heads_decode(*args)


@sparse_heads_decode.register_fake
def _(x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q=None, cos=None, sin=None, scale=0.0):
    return torch.empty_like(x)  # (B, d)
