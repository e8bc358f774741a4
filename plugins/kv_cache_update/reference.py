"""Plain-torch reference of the KV-cache update (see schema.py for the contract)."""

from __future__ import annotations

import torch


def cache_slots(positions: torch.Tensor, new_len: int, capacity: int, rolling: bool = False, sinks: int = 0):
    """Slot of every new token and whether it is written (the latest token wins a shared slot).

    Returns ``slots (B, S) int64`` and ``keep (B, S) bool``.
    """
    pos = positions.to(torch.int64)[:, None] + torch.arange(new_len, device=positions.device)  # (B, S)
    if not rolling:
        assert bool((pos < capacity).all()), "linear KV cache overflow: raise the capacity or use rolling mode"
        return pos, torch.ones_like(pos, dtype=torch.bool)
    window = capacity - sinks
    assert window > 0, "rolling mode needs capacity > sinks"
    slots = torch.where(pos < sinks, pos, sinks + (pos - sinks) % window)
    last = pos[:, -1:]  # (B, 1)
    keep = (pos < sinks) | (pos > last - window)
    return slots, keep


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary: x (B, H, S, D), cos/sin (B, S, D/2); float32 math, x's dtype out."""
    half = x.shape[-1] // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]  # (B, H, S, D/2)
    c, s = cos.float()[:, None], sin.float()[:, None]  # (B, 1, S, D/2)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, new_len: int, head_dim: int, base: float = 10000.0):
    """Llama rotary tables for tokens ``positions[b] + s``: cos, sin ``(B, S, D/2)`` float32."""
    pos = positions.to(torch.float32)[:, None] + torch.arange(new_len, device=positions.device)  # (B, S)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = pos[..., None] * inv_freq  # (B, S, D/2)
    return angles.cos(), angles.sin()


def kv_cache_update(k_cache, v_cache, k_new, v_new, positions, cos=None, sin=None,
                    rolling: bool = False, sinks: int = 0) -> None:
    """Writes k_new/v_new (B, Hkv, S, D) into the caches (B, Hkv, C, D) in place."""
    B, H, S, D = k_new.shape
    C = k_cache.shape[2]
    assert k_cache.shape == v_cache.shape == (B, H, C, D) and v_new.shape == k_new.shape
    slots, keep = cache_slots(positions, S, C, rolling, sinks)  # (B, S)
    k = apply_rotary(k_new, cos, sin) if cos is not None else k_new
    for b in range(B):
        idx = slots[b][keep[b]]
        k_cache[b, :, idx] = k[b][:, keep[b]].to(k_cache.dtype)
        v_cache[b, :, idx] = v_new[b][:, keep[b]].to(v_cache.dtype)
