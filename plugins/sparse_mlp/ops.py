"""``torch.ops.planforge.sparse_mlp``: CUDA runs Triton, CPU the reference."""

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
