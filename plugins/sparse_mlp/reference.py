"""Plain-torch reference of the sparse (selected-neuron) gated MLP."""

from __future__ import annotations

import torch


def sparse_mlp(x, w_gate, w_up, w_down_t, neurons) -> torch.Tensor:
    """x (B, d), weights (F, d), neurons (B, k) int32 -> (B, d) in x's dtype; float32 math."""
    B, d = x.shape
    assert w_gate.shape == w_up.shape == w_down_t.shape and w_gate.shape[1] == d and neurons.shape[0] == B
    idx = neurons.long()  # (B, k)
    xf = x.float()[:, None, :]  # (B, 1, d)
    gate = (w_gate[idx].float() * xf).sum(-1)  # (B, k)
    up = (w_up[idx].float() * xf).sum(-1)  # (B, k)
    h = torch.nn.functional.silu(gate) * up  # (B, k)
    return torch.einsum("bk,bkd->bd", h, w_down_t[idx].float()).to(x.dtype)  # (B, d)
