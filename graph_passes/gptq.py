"""GPTQ (Frantar et al. 2022) as QUIK uses it: act-order, outlier columns last, static scales.

The columns of ``W^T`` (input features) are processed in order of decreasing
Hessian diagonal; each is rounded and its error is spread over the columns not
yet processed, weighted by the inverse Hessian. The outlier columns come last
and are never rounded, so they absorb the error of the 4-bit part (QUIK §3.2).
Scales are fixed before the sweep (per channel or per block, with the clip
search of ``quantizer.weight_scales``), so act-order never splits a block.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from planforge.graph_passes import quantizer

BLOCK = 128
DAMP = 0.01


def _inverse_hessian_cholesky(h: torch.Tensor) -> torch.Tensor:
    h = h + DAMP * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq(w: np.ndarray, hessian: np.ndarray, keep: np.ndarray, outliers: np.ndarray, bits: int,
         group: Optional[int] = None, clip_search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [K, N], hessian [K, K] (X^T X over calibration tokens), keep/outliers: input-column indices.

    Returns (q int8 [len(keep), N] in ``keep`` order, scale float32 [G, N] over the kept rows,
    error-compensated outlier rows float32 [len(outliers), N]).
    """
    kq = len(keep)
    scale = quantizer.weight_scales(w[keep], bits, group, clip_search)  # (G, N)
    scale_rows = torch.from_numpy(quantizer.expand_rows(scale, kq, group).astype(np.float64))  # (Kq, N)
    h = torch.from_numpy(np.asarray(hessian, dtype=np.float64)).clone()
    wt = torch.from_numpy(np.asarray(w, dtype=np.float64).T.copy())  # (N, K)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    wt[:, dead] = 0.0
    order = torch.argsort(-torch.diag(h)[torch.from_numpy(keep)], stable=True)  # act-order within the kept columns
    perm = torch.cat([torch.from_numpy(keep)[order], torch.from_numpy(outliers)])
    wt, h = wt[:, perm], h[perm][:, perm]
    hinv = _inverse_hessian_cholesky(h)
    col_scale = scale_rows[order].T  # (N, Kq): scale of each processed column
    m = quantizer.qmax(bits)
    q = torch.zeros((wt.shape[0], kq), dtype=torch.float64)
    for i1 in range(0, kq, BLOCK):
        i2 = min(i1 + BLOCK, kq)
        w1, err1, hinv1 = wt[:, i1:i2].clone(), torch.zeros_like(wt[:, i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            s = col_scale[:, i1 + i]
            qi = torch.clamp(torch.round(w1[:, i] / s), -m - 1, m)
            q[:, i1 + i] = qi
            err = (w1[:, i] - qi * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        wt[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    q_keep = torch.empty_like(q)
    q_keep[:, order] = q
    return q_keep.T.numpy().astype(np.int8), scale, wt[:, kq:].T.numpy().astype(np.float32)
