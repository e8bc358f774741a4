"""Plain-torch reference of decode attention on selected query heads.

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
    B, d = x.shape
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    G = w_q.shape[0] // (Hkv * D)  # query heads per KV head
    h = heads.shape[1]
    rows = head_rows(heads, D)  # (B, h*D)
    q = torch.einsum("bnd,bd->bn", w_q[rows].float(), x.float())  # (B, h*D)
    if b_q is not None:
        q = q + b_q[rows].float()
    q = q.to(x.dtype).view(B, h, D)
    if cos is not None:
        q = apply_rotary(q[:, :, None], cos[:, None], sin[:, None])[:, :, 0]  # (B, h, D)
    kv = heads.long() // G  # (B, h) the KV head of each selected query head
    batch = torch.arange(B, device=x.device)[:, None]
    attn = attention_decode(q, k_cache[batch, kv], v_cache[batch, kv], seq_lens, scale)  # (B, h, D)
    y = torch.einsum("bn,bnd->bd", attn.reshape(B, h * D).float(), w_o[rows].float())
    return y.to(x.dtype)
