"""``torch.ops.planforge.sparse_heads_decode`` and its three steps: CUDA runs Triton, CPU the reference."""

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


@torch.library.custom_op("planforge::sparse_heads_q_proj", mutates_args=())
def sparse_heads_q_proj(x: torch.Tensor, w_q: torch.Tensor, heads: torch.Tensor, b_q: Optional[torch.Tensor] = None,
                        cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
                        head_dim: int = 0) -> torch.Tensor:
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415

        return kernel.q_proj(x, w_q, heads, b_q, cos, sin, head_dim)
    return reference.q_proj(x, w_q, heads, b_q, cos, sin, head_dim)


@sparse_heads_q_proj.register_fake
def _(x, w_q, heads, b_q=None, cos=None, sin=None, head_dim=0):
    return x.new_empty((x.shape[0], heads.shape[1], head_dim))


@torch.library.custom_op("planforge::sparse_heads_attend", mutates_args=())
def sparse_heads_attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                        heads: torch.Tensor, scale: float = 0.0, group: int = 1) -> torch.Tensor:
    if use_kernel(q):
        from . import kernel  # noqa: PLC0415

        return kernel.attend(q, k_cache, v_cache, seq_lens, heads, scale, group)
    return reference.attend(q, k_cache, v_cache, seq_lens, heads, scale, group)


@sparse_heads_attend.register_fake
def _(q, k_cache, v_cache, seq_lens, heads, scale=0.0, group=1):
    return torch.empty_like(q)


@torch.library.custom_op("planforge::sparse_heads_o_proj", mutates_args=())
def sparse_heads_o_proj(attn: torch.Tensor, w_o: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    if use_kernel(attn):
        from . import kernel  # noqa: PLC0415

        return kernel.o_proj(attn, w_o, heads)
    return reference.o_proj(attn, w_o, heads)


@sparse_heads_o_proj.register_fake
def _(attn, w_o, heads):
    return attn.new_empty((attn.shape[0], w_o.shape[1]))
