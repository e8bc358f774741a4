"""Plain-torch reference of the QUIK linear (W4A4 with FP16 outlier columns, or W8A8).

Activations, per token (row), over the non-outlier columns, asymmetric with ``2**bits``
levels, all in float32::

    lo, hi   = min(x), max(x)
    scale    = (hi - lo) / (2**bits - 1)         (1.0 where hi == lo)
    q        = clamp(floor((x - lo) / scale + 0.5), 0, 2**bits - 1)
    q_signed = q - 2**(bits-1)                    (int4 in [-8, 7] / int8 in [-128, 127])
    zero     = lo + 2**(bits-1) * scale           so x ~= q_signed * scale + zero

4-bit values are packed two to a byte along K: byte j = (q[2j] & 15) | (q[2j+1] << 4).
Weights are symmetric per output channel, ``w ~= w_int * w_scale``. Then::

    y = (q_x @ w_int^T) * scale_x * w_scale + zero_x * (w_scale * sum_k w_int) + x_out @ w_out^T

The outlier columns are ``perm[K - n_outliers:]`` of x (and of W), kept in fp16/bf16;
the quantized ones are ``perm[:K - n_outliers]`` in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _levels(bits: int) -> tuple[int, int]:
    assert bits in (4, 8), "bits must be 4 or 8"
    return (1 << bits) - 1, 1 << (bits - 1)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers (..., K) in the bits' range -> int8 bytes (..., K * bits / 8)."""
    q = q.to(torch.int32)
    if bits == 8:
        return q.to(torch.int8)
    assert q.shape[-1] % 2 == 0, "4-bit packing needs an even number of columns"
    byte = (q[..., 0::2] & 15) | ((q[..., 1::2] & 15) << 4)  # 0..255
    return byte.to(torch.uint8).view(torch.int8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 bytes -> signed integers (int32), inverse of :func:`pack`."""
    b = packed.to(torch.int32)
    if bits == 8:
        return b
    lo = ((b & 15) ^ 8) - 8  # sign-extend the low nibble
    hi = b >> 4  # arithmetic shift keeps the high nibble's sign
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def quantize_activations(x: torch.Tensor, perm: torch.Tensor, n_outliers: int, bits: int = 4):
    """x (M, K) fp16/bf16 -> (x_q int8 (M, Kq*bits/8), scale f32 (M,), zero f32 (M,), x_out (M, Ko))."""
    M, K = x.shape
    qmax, half = _levels(bits)
    kq = K - n_outliers
    xp = x[:, perm.long()]  # (M, K)
    xq, x_out = xp[:, :kq].float(), xp[:, kq:].contiguous()
    lo, hi = xq.amin(1, keepdim=True), xq.amax(1, keepdim=True)  # (M, 1)
    # tensor / tensor: IEEE division on every device (CUDA turns `/ python_scalar` into `* (1/scalar)`)
    scale = (hi - lo) / torch.full_like(hi, qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.floor((xq - lo) / scale + 0.5), 0, qmax).to(torch.int32) - half  # (M, Kq)
    zero = lo + half * scale
    return pack(q, bits), scale[:, 0], zero[:, 0], x_out


@dataclass
class QuikWeights:
    """A linear layer's weights in QUIK form (made offline; GPTQ lives in graph passes)."""

    packed: torch.Tensor  # (N, Kq * bits / 8) int8
    scale: torch.Tensor  # (N,) float32
    wsum: torch.Tensor  # (N,) float32, sum over K of the integer weights
    outliers: torch.Tensor  # (N, Ko) fp16/bf16
    perm: torch.Tensor  # (K,) int32, quantized columns first, outlier columns last
    bits: int

    @property
    def n_outliers(self) -> int:
        return self.outliers.shape[1]

    def to(self, device) -> "QuikWeights":
        return QuikWeights(self.packed.to(device), self.scale.to(device), self.wsum.to(device),
                           self.outliers.to(device), self.perm.to(device), self.bits)


def outlier_permutation(act_absmax: torch.Tensor, n_outliers: int) -> torch.Tensor:
    """Columns ordered with the n largest calibration |activation| columns last (QUIK)."""
    order = torch.argsort(act_absmax, stable=True)  # ascending: outliers end up last
    keep, out = order[: order.numel() - n_outliers].sort().values, order[order.numel() - n_outliers :].sort().values
    return torch.cat([keep, out]).to(torch.int32)


def quantize_weights(w: torch.Tensor, perm: torch.Tensor, n_outliers: int, bits: int = 4) -> QuikWeights:
    """Round-to-nearest symmetric per-channel weights (the GEMM's contract; GPTQ may replace RTN)."""
    qmax = (1 << (bits - 1)) - 1
    wp = w[:, perm.long()]  # (N, K)
    kq = w.shape[1] - n_outliers
    wq = wp[:, :kq].float()
    scale = wq.abs().amax(1).clamp_min(1e-8) / qmax  # (N,)
    q = torch.clamp(torch.round(wq / scale[:, None]), -qmax - 1, qmax).to(torch.int32)
    return QuikWeights(pack(q, bits), scale, q.sum(1).float(), wp[:, kq:].contiguous(), perm.to(torch.int32), bits)


def quik_matmul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits: int = 4,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The GEMM with its epilogue, in float64: (M, N) in x_out's dtype."""
    acc = unpack(x_q, bits).double() @ unpack(w_q, bits).double().T  # (M, N), exact integers
    y = acc * x_scale.double()[:, None] * w_scale.double()[None, :]
    y = y + x_zero.double()[:, None] * (w_scale.double() * w_sum.double())[None, :]
    y = y + x_out.double() @ w_out.double().T
    return y.to(out_dtype or x_out.dtype)


def quik_linear(x: torch.Tensor, w: QuikWeights) -> torch.Tensor:
    """y = x @ W^T for the quantized layer: activation quantization, then the GEMM."""
    xq, sx, zx, xo = quantize_activations(x, w.perm, w.n_outliers, w.bits)
    return quik_matmul(xq, sx, zx, xo, w.packed, w.scale, w.wsum, w.outliers, w.bits, x.dtype)
