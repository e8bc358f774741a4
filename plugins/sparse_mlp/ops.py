"""``torch.ops.planforge.sparse_mlp`` and its two halves: CUDA runs Triton, CPU the reference."""

from __future__ import annotations

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::sparse_mlp", mutates_args=())
def sparse_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down_t: torch.Tensor,
               neurons: torch.Tensor) -> torch.Tensor:
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        return kernel.sparse_mlp(x, w_gate, w_up, w_down_t, neurons)
    return reference.sparse_mlp(x, w_gate, w_up, w_down_t, neurons)


@sparse_mlp.register_fake
def _(x, w_gate, w_up, w_down_t, neurons):
    return torch.empty_like(x)  # (B, d)


@torch.library.custom_op("planforge::sparse_mlp_gate_up", mutates_args=())
def sparse_mlp_gate_up(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                       neurons: torch.Tensor) -> torch.Tensor:
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415

        return kernel.gate_up(x, w_gate, w_up, neurons)
    return reference.gate_up(x, w_gate, w_up, neurons)


@sparse_mlp_gate_up.register_fake
def _(x, w_gate, w_up, neurons):
    return x.new_empty(neurons.shape, dtype=torch.float32)  # (B, k)


@torch.library.custom_op("planforge::sparse_mlp_down", mutates_args=())
def sparse_mlp_down(h: torch.Tensor, w_down_t: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    if use_kernel(w_down_t):
        from . import kernel  # noqa: PLC0415

        return kernel.down(h, w_down_t, neurons)
    return reference.down(h, w_down_t, neurons)


@sparse_mlp_down.register_fake
def _(h, w_down_t, neurons):
    return w_down_t.new_empty((h.shape[0], w_down_t.shape[1]))  # (B, d)
