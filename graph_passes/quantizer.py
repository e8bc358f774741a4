"""Symmetric integer weight quantization in numpy: scales per output channel or per block, clip search.

Weights are stored as the exporter stores them, ``w`` [K = in_features, N = out_features].
A scale covers ``group`` consecutive input rows of one output column (``group=None``: all
rows, i.e. per output channel), ``scale`` [ceil(K / group), N]::

    qmax  = 2**(bits-1) - 1
    scale = max(max|w_group|, 1e-8) * ratio / qmax       (ratio = 1 without clip search)
    q     = clip(round_half_even(w / scale), -qmax-1, qmax)

Clip search (GPTQ's ``mse`` quantizer, as QUIK uses it) tries ``ratio`` = 1.00, 0.99, ...
and keeps, per group and channel, the ratio with the least ``sum |w - q*scale|**2.4``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

CLIP_RATIOS = np.float32(1.0) - np.arange(20, dtype=np.float32) / np.float32(100)  # 1.00 .. 0.81
CLIP_NORM = 2.4


def qmax(bits: int) -> int:
    assert bits in (4, 8), "weights are 4 or 8 bits"
    return (1 << (bits - 1)) - 1


def expand_rows(scale: np.ndarray, rows: int, group: Optional[int]) -> np.ndarray:
    """scale [G, N] -> [rows, N]: the scale of every weight row."""
    return np.repeat(scale, group or rows, axis=0)[:rows]


def round_to_grid(w: np.ndarray, scale_rows: np.ndarray, bits: int) -> np.ndarray:
    """w / scale rounded half-to-even and clipped to the signed range, as int8 (any shape, same as w)."""
    m = qmax(bits)
    return np.clip(np.round(w / scale_rows), -m - 1, m).astype(np.int8)


def _group_absmax(w: np.ndarray, group: Optional[int]) -> np.ndarray:
    k, n = w.shape
    g = group or k
    pad = (-k) % g
    padded = np.concatenate([np.abs(w), np.zeros((pad, n), w.dtype)]) if pad else np.abs(w)
    return padded.reshape(-1, g, n).max(axis=1)  # (G, N)


def weight_scales(w: np.ndarray, bits: int, group: Optional[int] = None, clip_search: bool = True) -> np.ndarray:
    """float32 w [K, N] -> float32 scale [ceil(K/group), N]."""
    w = np.asarray(w, dtype=np.float32)
    base = np.maximum(_group_absmax(w, group), np.float32(1e-8)) / np.float32(qmax(bits))
    if not clip_search:
        return base
    best, best_err = base, np.full(base.shape, np.inf)
    for ratio in CLIP_RATIOS:
        scale = base * ratio
        rows = expand_rows(scale, w.shape[0], group)
        err = np.abs(w - round_to_grid(w, rows, bits) * rows).astype(np.float64) ** CLIP_NORM  # (K, N)
        err = _group_sum(err, group)  # (G, N)
        better = err < best_err
        best, best_err = np.where(better, scale, best), np.where(better, err, best_err)
    return best


def _group_sum(err: np.ndarray, group: Optional[int]) -> np.ndarray:
    k, n = err.shape
    g = group or k
    pad = (-k) % g
    padded = np.concatenate([err, np.zeros((pad, n), err.dtype)]) if pad else err
    return padded.reshape(-1, g, n).sum(axis=1)


def rtn(w: np.ndarray, bits: int, group: Optional[int] = None, clip_search: bool = True
        ) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest: float32 w [K, N] -> (q int8 [K, N], scale float32 [G, N])."""
    w = np.asarray(w, dtype=np.float32)
    scale = weight_scales(w, bits, group, clip_search)
    return round_to_grid(w, expand_rows(scale, w.shape[0], group), bits), scale
