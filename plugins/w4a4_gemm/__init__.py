"""W4A4 / W8A8 GEMM with fp16 outlier columns, the QUIK scheme (``planforge::QuikQuantize`` and
``planforge::QuikMatMul``, v2).

``QuikQuantize(x, perm; n_outliers, bits)`` splits the outlier columns ``perm[K-Ko:]`` off
``x [M, K]`` and quantizes the rest per token, asymmetric, to ``bits`` (4: packed two per
byte; 8: one per byte): outputs ``x_q int8, x_scale f32 [M], x_zero f32 [M], x_out [M, Ko]``.

``QuikMatMul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out; bits)`` computes
``y [M, N] = (q_x @ q_w^T) x_scale w_scale + x_zero (w_scale w_sum) + x_out @ w_out^T`` with
symmetric per-channel weight codes packed like the activations. ``bits=8`` is the variant
QUIK keeps for LLaMA's down_proj. The exact formulas are in ``reference.py``.

On Hopper the 4-bit codes stay packed in memory and are computed on INT8 (or FP8 e4m3)
tensor cores: Hopper has no INT4 MMA. Few tokens unpack them in registers; from
``kernel.LARGE_M`` tokens on, the GEMM unpacks them once per call into a temporary
(``kernel_large_m``).
"""

from .ops import quik_linear, quik_matmul, quik_quantize
from .reference import QuikWeights, outlier_permutation, pack, quantize_weights, unpack
from .schema import MATMUL, QUANTIZE

__all__ = [
    "MATMUL",
    "QUANTIZE",
    "QuikWeights",
    "outlier_permutation",
    "pack",
    "quantize_weights",
    "quik_linear",
    "quik_matmul",
    "quik_quantize",
    "unpack",
]
