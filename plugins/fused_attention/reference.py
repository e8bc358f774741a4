"""Plain-torch reference of fused attention: the op's semantics (see schema.py)."""

from __future__ import annotations

import math

import torch


def _scale(scale: float, d: int) -> float:
    return scale if scale > 0 else 1.0 / math.sqrt(d)


def visible_keys(sq: int, skv: int, window: int = 0, sinks: int = 0, device=None) -> torch.Tensor:
    """Boolean (Sq, Skv) mask: query i (absolute position i + Skv - Sq) may attend key j."""
    qi = torch.arange(sq, device=device)[:, None] + (skv - sq)  # (Sq, 1)
    kj = torch.arange(skv, device=device)[None, :]  # (1, Skv)
    allowed = kj <= qi
    if window > 0:
        allowed &= (qi - kj < window) | (kj < sinks)
    return allowed


def attention_prefill(q, k, v, scale: float = 0.0, window: int = 0, sinks: int = 0) -> torch.Tensor:
    """Causal attention with GQA and optional sliding window plus sinks, in float32."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    assert k.shape == v.shape == (B, Hkv, Skv, D) and Hq % Hkv == 0 and Skv >= Sq
    g = Hq // Hkv
    kf = k.float().repeat_interleave(g, dim=1)  # (B, Hq, Skv, D)
    vf = v.float().repeat_interleave(g, dim=1)  # (B, Hq, Skv, D)
    scores = (q.float() @ kf.transpose(-1, -2)) * _scale(scale, D)  # (B, Hq, Sq, Skv)
    mask = visible_keys(Sq, Skv, window, sinks, device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)  # (B, Hq, Sq, D)


def attention_decode(q, k_cache, v_cache, seq_lens, scale: float = 0.0) -> torch.Tensor:
    """One query token per sequence against cache entries [0, seq_lens[b]), in float32."""
    B, Hq, D = q.shape
    Hkv, Smax = k_cache.shape[1], k_cache.shape[2]
    assert k_cache.shape == v_cache.shape == (B, Hkv, Smax, D) and Hq % Hkv == 0
    assert seq_lens.shape == (B,)
    g = Hq // Hkv
    kf = k_cache.float().repeat_interleave(g, dim=1)  # (B, Hq, Smax, D)
    vf = v_cache.float().repeat_interleave(g, dim=1)  # (B, Hq, Smax, D)
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), kf) * _scale(scale, D)  # (B, Hq, Smax)
    valid = torch.arange(Smax, device=q.device)[None, :] < seq_lens.to(q.device)[:, None]  # (B, Smax)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), vf).to(q.dtype)  # (B, Hq, D)
