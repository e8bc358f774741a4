"""Plain-torch reference of decode attention on selected query heads, and of its three steps.

Rounding points (shared with the kernel): q is accumulated in float32 (plus its bias) and rounded
to x's dtype, rotated in float32 and rounded again, the attention output is rounded to x's
dtype, the output projection accumulates in float32.
"""

from __future__ import annotations

import torch

from ..fused_attention.reference import attention_decode
from ..kv_cache_update.reference import apply_rotary


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, h) query heads -> (B, h*D) rows of a [Hq*D, ...] weight, int64."""
    return (heads.long()[..., None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten(1)


def sparse_heads_decode(x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q=None, cos=None, sin=None,
                        scale: float = 0.0) -> torch.Tensor:
    """x (B, d), w_q/w_o (Hq*D, d), caches (B, Hkv, C, D), heads (B, h) int32 -> (B, d) in x's dtype."""
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    q = q_proj(x, w_q, heads, b_q, cos, sin, D)
    attn = attend(q, k_cache, v_cache, seq_lens, heads, scale, w_q.shape[0] // (Hkv * D))
    return o_proj(attn, w_o, heads)


def q_proj(x, w_q, heads, b_q=None, cos=None, sin=None, head_dim: int = 0) -> torch.Tensor:
    """(B, h, D) in x's dtype: the selected heads' queries, rotated."""
    B, h = heads.shape
    rows = head_rows(heads, head_dim)  # (B, h*D)
    q = torch.einsum("bnd,bd->bn", w_q[rows].float(), x.float())  # (B, h*D)
    if b_q is not None:
        q = q + b_q[rows].float()
    q = q.to(x.dtype).view(B, h, head_dim)
    if cos is not None:
        q = apply_rotary(q[:, :, None], cos[:, None], sin[:, None])[:, :, 0]  # (B, h, D)
    return q


def attend(q, k_cache, v_cache, seq_lens, heads, scale: float = 0.0, group: int = 1) -> torch.Tensor:
    """(B, h, D): each selected head over its KV head (heads // group) of the cache."""
    kv = heads.long() // group  # (B, h)
    batch = torch.arange(q.shape[0], device=q.device)[:, None]
    return attention_decode(q, k_cache[batch, kv], v_cache[batch, kv], seq_lens, scale)


def o_proj(attn, w_o, heads) -> torch.Tensor:
    """(B, d) in attn's dtype: the selected heads' rows of w_o, float32 accumulation."""
    B, h, D = attn.shape
    y = torch.einsum("bn,bnd->bd", attn.reshape(B, h * D).float(), w_o[head_rows(heads, D)].float())
    return y.to(attn.dtype)
