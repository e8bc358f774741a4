"""``torch.ops.planforge.quik_quantize`` / ``quik_matmul``: CUDA runs Triton, CPU the reference."""

from __future__ import annotations

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::quik_quantize", mutates_args=())
def quik_quantize(x: torch.Tensor, perm: torch.Tensor, n_outliers: int,
                  bits: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if use_kernel(x):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        return kernel.quantize(x, perm, n_outliers, bits)
    return reference.quantize_activations(x, perm, n_outliers, bits)


@quik_quantize.register_fake
def _(x, perm, n_outliers, bits=4):
    M, K = x.shape
    f32 = dict(dtype=torch.float32, device=x.device)
    return (x.new_empty((M, (K - n_outliers) * bits // 8), dtype=torch.int8), x.new_empty((M,), **f32),
            x.new_empty((M,), **f32), x.new_empty((M, n_outliers)))


@torch.library.custom_op("planforge::quik_matmul", mutates_args=())
def quik_matmul(x_q: torch.Tensor, x_scale: torch.Tensor, x_zero: torch.Tensor, x_out: torch.Tensor,
                w_q: torch.Tensor, w_scale: torch.Tensor, w_sum: torch.Tensor, w_out: torch.Tensor,
                bits: int = 4) -> torch.Tensor:
    if use_kernel(x_out):  # x_out carries the float dtype, also with no outlier columns
        from . import kernel  # noqa: PLC0415

        return kernel.matmul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits)
    return reference.quik_matmul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits)


@quik_matmul.register_fake
def _(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits=4):
    return x_out.new_empty((x_q.shape[0], w_q.shape[0]))  # (M, N)


def quik_linear(x: torch.Tensor, w: reference.QuikWeights) -> torch.Tensor:
    """x (M, K) @ W^T through the two ops."""
    xq, sx, zx, xo = quik_quantize(x, w.perm, w.n_outliers, w.bits)
    return quik_matmul(xq, sx, zx, xo, w.packed, w.scale, w.wsum, w.outliers, w.bits)
