"""Plain-torch reference of decode attention on selected head groups.

Rounding points (shared with the kernel): q and k are rotated in float32 and rounded to
x's dtype, k/v are stored in the cache dtype, the attention output is rounded to x's
dtype, the output projection accumulates in float32.
"""

from __future__ import annotations

import torch

from ..fused_attention.reference import attention_decode
from ..kv_cache_update.reference import apply_rotary


def sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, positions, groups) -> torch.Tensor:
    B, d = x.shape
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    G = w_q.shape[0] // (Hkv * D)
    h = groups.shape[1]
    y = torch.zeros(B, d, dtype=torch.float32, device=x.device)
    for b in range(B):
        sel = groups[b].long()  # (h,)
        heads = (sel[:, None] * G + torch.arange(G, device=x.device)).flatten()  # (h*G,) query heads
        xf = x[b].float()
        q = (w_q.view(-1, D, d)[heads].float() @ xf).to(x.dtype)  # (h*G, D)
        k = (w_k.view(Hkv, D, d)[sel].float() @ xf).to(x.dtype)  # (h, D)
        v = (w_v.view(Hkv, D, d)[sel].float() @ xf).to(x.dtype)  # (h, D)
        c, s = cos[b : b + 1, None], sin[b : b + 1, None]  # (1, 1, D/2)
        q = apply_rotary(q[None, :, None], c, s)[0, :, 0]  # (h*G, D)
        k = apply_rotary(k[None, :, None], c, s)[0, :, 0]  # (h, D)
        p = int(positions[b])
        k_cache[b, sel, p] = k.to(k_cache.dtype)
        v_cache[b, sel, p] = v.to(v_cache.dtype)
        lens = torch.tensor([p + 1], dtype=torch.int32, device=x.device)
        attn = attention_decode(q[None], k_cache[b : b + 1, sel], v_cache[b : b + 1, sel], lens)[0]  # (h*G, D)
        w_cols = w_o.view(d, -1, D)[:, heads].float()  # (d, h*G, D)
        y[b] = torch.einsum("nhe,he->n", w_cols, attn.float())
    return y.to(x.dtype)
