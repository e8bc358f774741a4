"""The QUIK GEMM for many tokens (prefill), where it is compute-bound: codes unpacked once per call.

Unpacking 4-bit tiles in registers inside the GEMM (``kernel.quik_gemm_kernel``) re-stages every
weight tile through shared memory before each tensor-core ``dot``; at M in the thousands that
halves the INT8 throughput. Here the packed weights are unpacked once per call into one code
per byte (int8, or e4m3 with ``fp8``: both exact for -8..7), the activations are quantized
straight to such codes, and the GEMM streams both through TMA descriptors onto the tensor
cores with the same epilogue. The unpacked weights live only for the call (an N*K-byte
temporary: 45 MB for an 11008 x 4096 layer), so storage stays 4-bit; the unpack costs 14 us
at 4096 x 4096 on an H100, 14% of the layer at M = 2048 and 4% at M = 8192. Through the two ONNX
ops (QuikQuantize, then QuikMatMul) the packed activations are unpacked here too; ``linear``
quantizes straight to codes.
"""

from __future__ import annotations

import torch

from .._triton import TMA_ALIGN, interpreting, next_pow2, require_triton, tma_aligned

triton = require_triton()
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from .kernel import _epilogue, _tile  # noqa: E402

@triton.jit
def unpack_kernel(P, Q, KB, sp, sq, BLOCK: tl.constexpr):
    """Row r of packed 4-bit bytes -> 2 KB codes in Q's dtype: byte j holds columns 2j (low nibble) and 2j+1."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    b = tl.load(P + row * sp + offs, mask=offs < KB, other=0)  # (BLOCK,) int8
    codes = tl.interleave((b << 4) >> 4, b >> 4)  # (2 BLOCK,) sign-extended nibbles
    offs2 = 2 * tl.program_id(1) * BLOCK + tl.arange(0, 2 * BLOCK)
    tl.store(Q + row * sq + offs2, codes.to(tl.float32).to(Q.dtype.element_ty), mask=offs2 < 2 * KB)


def _set_blocks(nargs):
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the three best of 32 in the H100 sweep
# (samples/tuning/sweep_w4a4.py large, M = 4096), and a 64-row tile for M of a few hundred
TMA_CONFIGS = [(128, 256, 128, 8, 4), (256, 128, 128, 8, 4), (128, 128, 128, 4, 3), (64, 128, 128, 4, 4)]
if interpreting():  # the CPU interpreter cannot time configs
    TMA_CONFIGS = [(32, 32, 32, 4, 1)]


@triton.autotune(configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                        num_warps=w, num_stages=s, pre_hook=_set_blocks)
                          for bm, bn, bk, w, s in TMA_CONFIGS],
                 key=["M_BUCKET", "N", "K", "KO", "FP8"])
@triton.jit
def quik_gemm_tma_kernel(a_desc, w_desc, SX, ZX, SW, WSUM, XO, WO, Y, M, N, K, KO, M_BUCKET, sxo, swo, sy,
                         FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, WARP_SPEC: tl.constexpr = False, BLOCK_KO: tl.constexpr = 64):
    # WARP_SPEC (Triton's warp-specialised loop) is kept for the sweep: on the H100 it changed
    # nothing measurable (within 1% on every config), so the autotuned configs leave it off.
    """y (M, N) from one-code-per-byte activations (M, K) and weights (N, K), both read by TMA."""
    pid = tl.program_id(0)
    pid_m, pid_n = _tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32 if FP8 else tl.int32)
    for k in tl.range(0, K, BLOCK_K, warp_specialize=WARP_SPEC):
        a = a_desc.load([pid_m * BLOCK_M, k])  # (BM, BK), zero past M and K
        w = w_desc.load([pid_n * BLOCK_N, k])  # (BN, BK)
        if FP8:  # every MMA's sum promoted to float32: exact integer sums (see kernel._int_dot)
            acc = tl.dot(a, w.T, acc, max_num_imprecise_acc=0)
        else:
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _epilogue(acc, offs_m, offs_n, M, N, SX, ZX, SW, WSUM, XO, WO, Y, KO, sxo, swo, sy, Y, Y, pid, 0, 1, BLOCK_KO)


def code_dtype(fp8: bool) -> torch.dtype:
    return torch.float8_e4m3fn if fp8 else torch.int8


def empty_codes(rows: int, k: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(rows, k) one code per byte (int8 or e4m3), row stride padded for TMA."""
    stride = -(-k // TMA_ALIGN) * TMA_ALIGN
    return torch.empty((rows, stride), dtype=dtype, device=device)[:, :k]


def unpack(packed: torch.Tensor, fp8: bool) -> torch.Tensor:
    """(R, KB) packed 4-bit -> (R, 2 KB) codes (int8 or e4m3), TMA-aligned rows."""
    rows, kb = packed.shape
    out = empty_codes(rows, 2 * kb, code_dtype(fp8), packed.device)
    block = 1024
    unpack_kernel[(rows, triton.cdiv(kb, block))](packed, out, kb, packed.stride(0), out.stride(0), BLOCK=block)
    return out


def tma_ready(codes: torch.Tensor) -> bool:
    return tma_aligned(codes)


def matmul_codes(x_c, x_scale, x_zero, x_out, w_c, w_scale, w_sum, w_out, config=None) -> torch.Tensor:
    """The QUIK GEMM on one-code-per-byte x_c (M, K) and w_c (N, K) (TMA-aligned); output in x_out's dtype.

    config: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, warp_specialize) instead of the autotuner (sweeps)."""
    M, K = x_c.shape
    N = w_c.shape[0]
    assert w_c.shape[1] == K and x_c.dtype == w_c.dtype and tma_ready(x_c) and tma_ready(w_c)
    y = torch.empty((M, N), dtype=x_out.dtype, device=x_c.device)
    # block shapes are placeholders: the autotuner's pre_hook sets each config's
    a_desc = TensorDescriptor(x_c, [M, K], [x_c.stride(0), 1], [16, 16])
    w_desc = TensorDescriptor(w_c, [N, K], [w_c.stride(0), 1], [16, 16])
    args = (a_desc, w_desc, x_scale, x_zero, w_scale, w_sum, x_out, w_out, y, M, N, K, x_out.shape[1],
            min(next_pow2(M), 8192), max(1, x_out.stride(0)), max(1, w_out.stride(0)), y.stride(0))
    fp8 = x_c.dtype == torch.float8_e4m3fn
    if config is None:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        quik_gemm_tma_kernel[grid](*args, FP8=fp8)
        return y
    bm, bn, bk, warps, stages, spec = config
    a_desc.block_shape, w_desc.block_shape = [bm, bk], [bn, bk]
    quik_gemm_tma_kernel.fn[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        *args, FP8=fp8, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, WARP_SPEC=spec, num_warps=warps, num_stages=stages)
    return y
