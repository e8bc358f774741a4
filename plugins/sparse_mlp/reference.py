"""Plain-torch reference of the sparse (selected-neuron) gated MLP, and of its two halves."""

from __future__ import annotations

import torch


def sparse_mlp(x, w_gate, w_up, w_down_t, neurons) -> torch.Tensor:
    """x (B, d), weights (F, d), neurons (B, k) int32 -> (B, d) in x's dtype; float32 math."""
    assert w_gate.shape == w_up.shape == w_down_t.shape
    return down(gate_up(x, w_gate, w_up, neurons), w_down_t, neurons).to(x.dtype)


def gate_up(x, w_gate, w_up, neurons) -> torch.Tensor:
    """(B, k) float32: silu(gate) * up of each selected neuron."""
    B, d = x.shape
    assert w_gate.shape == w_up.shape and w_gate.shape[1] == d and neurons.shape[0] == B
    idx = neurons.long()  # (B, k)
    xf = x.float()[:, None, :]  # (B, 1, d)
    gate = (w_gate[idx].float() * xf).sum(-1)  # (B, k)
    up = (w_up[idx].float() * xf).sum(-1)  # (B, k)
    return torch.nn.functional.silu(gate) * up


def down(h, w_down_t, neurons) -> torch.Tensor:
    """h (B, k) float32, w_down_t (F, d) -> (B, d) in w_down_t's dtype."""
    assert h.dtype == torch.float32 and h.shape == neurons.shape
    return torch.einsum("bk,bkd->bd", h, w_down_t[neurons.long()].float()).to(w_down_t.dtype)
