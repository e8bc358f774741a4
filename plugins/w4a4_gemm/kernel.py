"""Triton kernels of the QUIK linear, for Hopper (no INT4 tensor cores).

``quantize``: one program per token row gathers the row through ``perm``, splits off
the outlier columns, takes the row's min/max and writes 4-bit (two per byte) or 8-bit
codes, or one code per byte for the large-M GEMM. It follows the reference's float32
operation order with IEEE division (``div_rn``), so its output is bit-exact.

``matmul`` by the number of tokens M:

- M = 1: ``quik_gemv_kernel``, memory-bound, so CUDA cores rather than 16-row tensor-core
  tiles: each program streams BLOCK_N packed weight rows and accumulates int32 products of
  sign-extended nibbles (exact). ``linear`` runs it with the quantizer fused in (one launch).
- 1 < M < LARGE_M: ``quik_gemm_kernel``. 4-bit codes stay packed in memory; a K tile of
  packed bytes is unpacked in registers into its low nibbles (even columns) and high
  nibbles (odd columns), sign-extended to int8 by shifts, and the two halves go through
  separate int8 tensor-core dots (``tl.dot`` int8 -> int32), so no interleave is needed:
  sum_k a_k w_k = sum_j a_2j w_2j + a_2j+1 w_2j+1. With ``compute="fp8"`` the same integers
  go through e4m3 tensor cores (exact for -8..7, and every MMA's sum is promoted to the
  float32 accumulator). M <= 16 uses one fixed tile with K split across programs (SPLIT_K,
  the last split of a tile adds the splits in order and writes it) instead of the
  autotuner, whose dispatch costs more than the decode GEMM itself.
- M >= LARGE_M: ``kernel_large_m``, codes unpacked once per call and a TMA GEMM (8-bit
  codes whose rows TMA cannot address, K - n_outliers not a multiple of 16, stay on
  ``quik_gemm_kernel``).

Every path shares ``_epilogue``: token and channel scales, the zero-point correction and
the fp16/bf16 outlier GEMM, then one write of the output.
"""

from __future__ import annotations

import torch

from .._triton import interpreting, next_pow2, require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def _code(x, lo, scale, QMAX: tl.constexpr, HALF: tl.constexpr):
    """float32 values -> signed integer codes, the quantizer's exact operation order."""
    q = tl.math.floor(tl.math.div_rn(x - lo, scale) + 0.5)
    return tl.minimum(tl.maximum(q, 0.0), QMAX * 1.0).to(tl.int32) - HALF


@triton.jit
def quantize_kernel(X, PERM, XQ, SX, ZX, XO, KQB, KO, sxm, sxqm, sxom,
                    BITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, UNPACKED: tl.constexpr = False):
    """One program per token row, in chunks of BLOCK_B output bytes: min/max over the row, then
    a second pass (the row is in L1/L2 by then) writes the codes. Whole-row tiles spilled
    registers on long rows (K = 11008)."""
    PACK: tl.constexpr = 8 // BITS
    QMAX: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = 1 << (BITS - 1)
    m = tl.program_id(0).to(tl.int64)
    row = X + m * sxm
    offs_b = tl.arange(0, BLOCK_B)  # output bytes of a chunk
    offs_p = tl.arange(0, PACK)  # codes within a byte
    lo_v = tl.full([BLOCK_B, PACK], float("inf"), tl.float32)
    hi_v = tl.full([BLOCK_B, PACK], float("-inf"), tl.float32)
    for b0 in range(0, KQB, BLOCK_B):
        bmask = (b0 + offs_b) < KQB
        cols = tl.load(PERM + (b0 + offs_b)[:, None] * PACK + offs_p[None, :], mask=bmask[:, None], other=0)
        x = tl.load(row + cols, mask=bmask[:, None], other=0.0).to(tl.float32)  # (BB, PACK)
        lo_v = tl.minimum(lo_v, tl.where(bmask[:, None], x, float("inf")))
        hi_v = tl.maximum(hi_v, tl.where(bmask[:, None], x, float("-inf")))
    lo = tl.min(tl.min(lo_v, 1), 0)
    hi = tl.max(tl.max(hi_v, 1), 0)
    scale = tl.math.div_rn(hi - lo, QMAX * 1.0)
    scale = tl.where(scale > 0, scale, 1.0)
    for b0 in range(0, KQB, BLOCK_B):
        bmask = (b0 + offs_b) < KQB
        cols = tl.load(PERM + (b0 + offs_b)[:, None] * PACK + offs_p[None, :], mask=bmask[:, None], other=0)
        x = tl.load(row + cols, mask=bmask[:, None], other=0.0).to(tl.float32)
        q = _code(x, lo, scale, QMAX, HALF)  # (BB, PACK) signed codes
        if UNPACKED:  # one code per element, in XQ's dtype (int8 or e4m3, both exact for -8..7)
            dst = XQ + m * sxqm + (b0 + offs_b)[:, None] * PACK + offs_p[None, :]
            tl.store(dst, q.to(tl.float32).to(XQ.dtype.element_ty), mask=bmask[:, None])
        else:
            byte = tl.sum((q & ((1 << BITS) - 1)) << (offs_p[None, :] * BITS), 1)  # (BB,) 0..255
            tl.store(XQ + m * sxqm + b0 + offs_b, byte.to(tl.int8), mask=bmask)
    tl.store(SX + m, scale)
    tl.store(ZX + m, lo + HALF * scale)
    offs_o = tl.arange(0, BLOCK_O)
    omask = offs_o < KO
    ocols = tl.load(PERM + KQB * PACK + offs_o, mask=omask, other=0)
    tl.store(XO + m * sxom + offs_o, tl.load(row + ocols, mask=omask), mask=omask)


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program -> (row tile, column tile), GROUP_M row tiles per band so W tiles stay in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * num_n)) % size_m, (pid % (GROUP_M * num_n)) // size_m


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, SX, ZX, SW, WSUM, XO, WO, Y, KO, sxo, swo, sy, WS, CNT, tile, split,
              SPLIT_K: tl.constexpr, BLOCK_KO: tl.constexpr):
    """y = acc sx sw + zx (sw wsum) + x_out @ w_out^T for one (BM, BN) tile, written once in Y's dtype.

    SPLIT_K > 1: this program holds split ``split`` of K. Each split writes its share in float32
    to its own slice of the workspace WS (SPLIT_K, M, N) (split 0 adds the zero-point term, the
    outlier columns are dealt out in BLOCK_KO chunks); the last split of the tile to arrive
    (counter CNT[tile]) adds the slices in split order and writes Y: one launch, and the same
    bits on every call whatever order the splits finish in."""
    mm = offs_m < M
    nm = offs_n < N
    sx = tl.load(SX + offs_m, mask=mm, other=0.0)
    sw = tl.load(SW + offs_n, mask=nm, other=0.0)
    y = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    if split == 0:
        zx = tl.load(ZX + offs_m, mask=mm, other=0.0)
        wsum = tl.load(WSUM + offs_n, mask=nm, other=0.0)
        y += zx[:, None] * (sw * wsum)[None, :]
    offs_o = tl.arange(0, BLOCK_KO)
    xo_ptrs = XO + offs_m[:, None].to(tl.int64) * sxo + offs_o[None, :]
    wo_ptrs = WO + offs_n[:, None].to(tl.int64) * swo + offs_o[None, :]
    for k0 in range(0, KO, SPLIT_K * BLOCK_KO):
        k = k0 + split * BLOCK_KO
        om = (k + offs_o) < KO
        xo = tl.load(xo_ptrs + k, mask=mm[:, None] & om[None, :], other=0.0)  # (BM, BKO)
        wo = tl.load(wo_ptrs + k, mask=nm[:, None] & om[None, :], other=0.0)  # (BN, BKO)
        y = tl.dot(xo, tl.trans(wo), y)
    mask = mm[:, None] & nm[None, :]
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * sy + offs_n[None, :]
    if SPLIT_K > 1:
        ws_ptrs = WS + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]  # slice 0
        tl.store(ws_ptrs + split.to(tl.int64) * M * N, y, mask=mask)
        tl.debug_barrier()  # every thread's share is written before the tile's counter moves (release)
        if tl.atomic_add(CNT + tile, 1, sem="acq_rel") == SPLIT_K - 1:
            y = tl.zeros_like(y)
            for s in tl.static_range(SPLIT_K):  # fixed order: deterministic sums
                y += tl.load(ws_ptrs + s * M * N, mask=mask, other=0.0, volatile=True)
            tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _int_dot(a, w, acc, BITS: tl.constexpr, USE_FP8: tl.constexpr):
    """acc += a @ w^T for packed int8 tiles a (BM, BK) and w (BN, BK)."""
    if BITS == 4:
        a_lo = (a << 4) >> 4  # sign-extended low nibbles: even columns
        a_hi = a >> 4  # high nibbles: odd columns
        w_lo = (w << 4) >> 4
        w_hi = w >> 4
        if USE_FP8:  # max_num_imprecise_acc=0: every MMA's sum goes to the float32 accumulator, so the
            # integer sums stay exact (Hopper's FP8 MMA keeps a narrower running sum otherwise)
            a_lo, a_hi = a_lo.to(tl.float16).to(tl.float8e4nv), a_hi.to(tl.float16).to(tl.float8e4nv)
            w_lo, w_hi = w_lo.to(tl.float16).to(tl.float8e4nv), w_hi.to(tl.float16).to(tl.float8e4nv)
            acc = tl.dot(a_lo, tl.trans(w_lo), acc, max_num_imprecise_acc=0)
            acc = tl.dot(a_hi, tl.trans(w_hi), acc, max_num_imprecise_acc=0)
        else:
            acc = tl.dot(a_lo, tl.trans(w_lo), acc, out_dtype=tl.int32)
            acc = tl.dot(a_hi, tl.trans(w_hi), acc, out_dtype=tl.int32)
    else:
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
    return acc


def _gemm_configs():
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    small = [(16, bn, bk, 4, st) for bn, bk, st in ((32, 256, 4), (64, 128, 4), (16, 256, 5), (64, 256, 3))]
    large = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (256, 128, 64, 8, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in small + large]


def _prune(configs, named_args, **kwargs):
    small = named_args["M"] <= 64
    return [c for c in configs if (c.kwargs["BLOCK_M"] == 16) == small] or configs


@triton.autotune(configs=_gemm_configs(), key=["M_BUCKET", "N", "KB", "KO", "BITS", "USE_FP8"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def quik_gemm_kernel(XQ, WQ, SX, ZX, SW, WSUM, XO, WO, Y, WS, CNT, M, N, KB, K_SPLIT, KO, M_BUCKET,
                     sxq, swq, sxo, swo, sy,
                     BITS: tl.constexpr, USE_FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                     SWAP_AB: tl.constexpr = False, BLOCK_KO: tl.constexpr = 64):
    # SWAP_AB (few tokens): y^T = W x^T, so the unpacked weight tile is the MMA's BLOCK_N-row
    # A operand and the tokens are its columns, instead of 16 token rows against BLOCK_N weights.
    pid = tl.program_id(0)
    pid_m, pid_n = _tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mm = offs_m < M
    nm = offs_n < N
    a_ptrs = XQ + offs_m[:, None].to(tl.int64) * sxq + offs_k[None, :]
    w_ptrs = WQ + offs_n[:, None].to(tl.int64) * swq + offs_k[None, :]
    acc_type = tl.float32 if USE_FP8 else tl.int32
    if SWAP_AB:
        acc = tl.zeros([BLOCK_N, BLOCK_M], acc_type)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], acc_type)
    k_first = tl.program_id(1) * K_SPLIT
    for kk in range(0, K_SPLIT, BLOCK_K):  # the last split masks past KB
        k = k_first + kk
        km = (k + offs_k) < KB
        a = tl.load(a_ptrs + k, mask=mm[:, None] & km[None, :], other=0)  # (BM, BK) packed bytes
        w = tl.load(w_ptrs + k, mask=nm[:, None] & km[None, :], other=0)  # (BN, BK) packed bytes
        if SWAP_AB:
            acc = _int_dot(w, a, acc, BITS, USE_FP8)
        else:
            acc = _int_dot(a, w, acc, BITS, USE_FP8)
    if SWAP_AB:
        acc = tl.trans(acc)
    _epilogue(acc, offs_m, offs_n, M, N, SX, ZX, SW, WSUM, XO, WO, Y, KO, sxo, swo, sy, WS, CNT, pid,
              tl.program_id(1), SPLIT_K, BLOCK_KO)


@triton.jit
def quantize_entry(X, PERM, KQB, KO, sxm, sxqm, sxom, XQ, SX, ZX, XO,
                   BITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr):
    """QuikQuantize's TensorRT AOT entry point (plugins/aot.py): inputs, scalars, outputs."""
    quantize_kernel(X, PERM, XQ, SX, ZX, XO, KQB, KO, sxm, sxqm, sxom, BITS, BLOCK_B, BLOCK_O, False)


_quik_gemm_body = quik_gemm_kernel.fn  # the JIT function under the autotuner


@triton.jit
def quik_matmul_entry(XQ, SX, ZX, XO, WQ, SW, WSUM, WO, M, N, KB, KO, sxq, swq, sxo, swo, sy, Y,
                      BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr):
    """QuikMatMul's TensorRT AOT entry point (plugins/aot.py): inputs, scalars, output; the whole
    K per program (SPLIT_K = 1: the split-K workspace and counters are Python-launcher only)."""
    _quik_gemm_body(XQ, WQ, SX, ZX, SW, WSUM, XO, WO, Y, Y, Y, M, N, KB, KB, KO, M, sxq, swq, sxo, swo, sy,
                    BITS, False, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, 1, SWAP_AB, 64)


@triton.jit
def quik_gemv_kernel(X, PERM, XQ, SX, ZX, XO, WQ, SW, WSUM, WO, Y, N, KB, KO, swq, swo,
                     BITS: tl.constexpr, FUSED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_KO: tl.constexpr, BLOCK_X: tl.constexpr):
    """One token (M = 1): y (N,) on CUDA cores, BLOCK_N output channels per program.

    Bandwidth-bound on the packed weights, so no tensor cores: each program streams its
    (BLOCK_N, KB) packed rows and multiply-adds the sign-extended nibbles in int32 (exact).
    FUSED: the token is quantized inside the kernel (every program takes the row's min/max
    itself: K gathers from L2, cheaper than a second launch), else x_q/x_scale/x_zero/x_out
    come from QuikQuantize.
    """
    PACK: tl.constexpr = 8 // BITS
    QMAX: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = 1 << (BITS - 1)
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    KQ = KB * PACK
    if FUSED:
        offs_x = tl.arange(0, BLOCK_X)
        lo_v = tl.full([BLOCK_X], float("inf"), tl.float32)
        hi_v = tl.full([BLOCK_X], float("-inf"), tl.float32)
        for k in range(0, KQ, BLOCK_X):
            xm = (k + offs_x) < KQ
            cols = tl.load(PERM + k + offs_x, mask=xm, other=0)
            xv = tl.load(X + cols, mask=xm, other=0.0).to(tl.float32)
            lo_v = tl.minimum(lo_v, tl.where(xm, xv, float("inf")))
            hi_v = tl.maximum(hi_v, tl.where(xm, xv, float("-inf")))
        lo = tl.min(lo_v, 0)
        hi = tl.max(hi_v, 0)
        scale = tl.math.div_rn(hi - lo, QMAX * 1.0)
        scale = tl.where(scale > 0, scale, 1.0)
        zero = lo + HALF * scale
    else:
        lo = 0.0
        scale = tl.load(SX)
        zero = tl.load(ZX)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.int32)
    w_ptrs = WQ + offs_n[:, None].to(tl.int64) * swq + offs_k[None, :]
    for k in range(0, KB, BLOCK_K):
        km = (k + offs_k) < KB
        w = tl.load(w_ptrs + k, mask=nm[:, None] & km[None, :], other=0).to(tl.int32)  # (BN, BK) bytes
        if BITS == 4:
            if FUSED:
                cols = tl.load(PERM + (k + offs_k)[:, None] * 2 + tl.arange(0, 2)[None, :], mask=km[:, None], other=0)
                q = _code(tl.load(X + cols, mask=km[:, None], other=0.0).to(tl.float32), lo, scale, QMAX, HALF)
                a0, a1 = tl.split(q)  # codes of columns 2j and 2j+1
            else:
                a = tl.load(XQ + k + offs_k, mask=km, other=0).to(tl.int32)
                a0 = (a << 28) >> 28
                a1 = a >> 4
            acc += a0[None, :] * ((w << 28) >> 28) + a1[None, :] * (w >> 4)
        else:
            if FUSED:
                cols = tl.load(PERM + k + offs_k, mask=km, other=0)
                a = _code(tl.load(X + cols, mask=km, other=0.0).to(tl.float32), lo, scale, QMAX, HALF)
            else:
                a = tl.load(XQ + k + offs_k, mask=km, other=0).to(tl.int32)
            acc += a[None, :] * w
    dot = tl.sum(acc, 1)
    sw = tl.load(SW + offs_n, mask=nm, other=0.0)
    wsum = tl.load(WSUM + offs_n, mask=nm, other=0.0)
    y = dot.to(tl.float32) * scale * sw + zero * (sw * wsum)
    offs_o = tl.arange(0, BLOCK_KO)
    yo = tl.zeros([BLOCK_N, BLOCK_KO], tl.float32)
    for k in range(0, KO, BLOCK_KO):
        om = (k + offs_o) < KO
        if FUSED:
            xo = tl.load(X + tl.load(PERM + KQ + k + offs_o, mask=om, other=0), mask=om, other=0.0)
        else:
            xo = tl.load(XO + k + offs_o, mask=om, other=0.0)
        wo = tl.load(WO + offs_n[:, None].to(tl.int64) * swo + (k + offs_o)[None, :],
                     mask=nm[:, None] & om[None, :], other=0.0)
        yo += xo.to(tl.float32)[None, :] * wo.to(tl.float32)
    y += tl.sum(yo, 1)
    tl.store(Y + offs_n, y.to(Y.dtype.element_ty), mask=nm)


QUANTIZE_CHUNK = 2048  # activations per chunk of the quantizer's row loops
# (BLOCK_N, BLOCK_K, num_warps, num_stages) of the M = 1 GEMV fed by QuikQuantize, fixed, not
# autotuned (H100 sweep); _fused_config below is the same kernel quantizing in place
GEMV_CONFIG = (8, 512, 4, 3)
# (+ SPLIT_K, SWAP_AB) samples/tuning/sweep_w4a4.py split: best of 112 (L2 flushed) on the three 7B shapes
SMALL_M_CONFIG = (64, 128, 4, 4, 4, True)
# linear() on one token: one launch (quantize inside the GEMV) or QuikQuantize + GEMV
FUSE_M1 = True


def _fused_config(n: int, kb: int):
    """Quantizing in place costs every program a pass over the token: long rows want more
    channels per program (fewer passes), wide layers more programs."""
    if kb >= 4096:
        return (32, 512, 8, 3)
    return (32, 256, 4, 3) if n >= 8192 else (16, 512, 4, 3)


def _gemv(x, perm, x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits, out_dtype, config=None):
    N, kb = w_q.shape
    ko = w_out.shape[1]
    fused = x is not None
    bn, bk, warps, stages = config or (_fused_config(N, kb) if fused else GEMV_CONFIG)
    y = torch.empty((1, N), dtype=out_dtype, device=w_q.device)
    quik_gemv_kernel[(triton.cdiv(N, bn),)](
        x if fused else x_q, perm if fused else x_q, x_q if not fused else x, x_scale if not fused else x,
        x_zero if not fused else x, x_out if not fused else x, w_q, w_scale, w_sum, w_out, y, N, kb, ko,
        w_q.stride(0), max(1, w_out.stride(0)),
        BITS=bits, FUSED=fused, BLOCK_N=bn, BLOCK_K=bk, BLOCK_KO=64, BLOCK_X=min(4096, next_pow2(kb * 8 // bits)),
        num_warps=warps, num_stages=stages,
    )
    return y


def quantize_block_b(kqb: int, bits: int) -> int:
    """Output bytes per chunk of a token row."""
    return min(next_pow2(kqb), QUANTIZE_CHUNK // (8 // bits))


def quantize_block_o(n_outliers: int) -> int:
    return max(2, next_pow2(n_outliers))


def quantize(x: torch.Tensor, perm: torch.Tensor, n_outliers: int, bits: int = 4, codes: torch.dtype | None = None):
    """Triton version of reference.quantize_activations (bit-exact).

    codes (int8 or float8_e4m3fn): one code per element instead of the packed bytes, in a
    TMA-aligned buffer, for the large-M GEMM."""
    M, K = x.shape
    kq = K - n_outliers
    pack = 8 // bits
    assert x.stride(1) == 1 and perm.dtype == torch.int32 and kq % pack == 0
    kqb = kq // pack
    if codes is None:
        xq = torch.empty((M, kqb), dtype=torch.int8, device=x.device)
    else:
        xq = kernel_large_m.empty_codes(M, kq, codes, x.device)
    sx = torch.empty((M,), dtype=torch.float32, device=x.device)
    zx = torch.empty((M,), dtype=torch.float32, device=x.device)
    xo = torch.empty((M, n_outliers), dtype=x.dtype, device=x.device)
    quantize_kernel[(M,)](
        x, perm, xq, sx, zx, xo, kqb, n_outliers, x.stride(0), xq.stride(0), max(1, xo.stride(0)),
        BITS=bits, BLOCK_B=quantize_block_b(kqb, bits), BLOCK_O=quantize_block_o(n_outliers),
        UNPACKED=codes is not None, num_warps=4,
    )
    return xq, sx, zx, xo


# From this many tokens on, the GEMM unpacks the codes once per call and runs the TMA kernel
# (kernel_large_m); below it, 4-bit tiles are unpacked in registers. H100, N = K = 4096
# (sweep_w4a4.py large): 43.7 against 71.2 us at M = 128, 106 against 207 at M = 2048.
LARGE_M = 128


def _large_m_codes(x_q, w_q, bits: int, fp8: bool, unpacked: bool):
    """(x codes, w codes) one per byte and TMA-aligned, or None where the large-M kernel does not apply."""
    if bits == 4:
        return x_q if unpacked else kernel_large_m.unpack(x_q, fp8), kernel_large_m.unpack(w_q, fp8)
    return (x_q, w_q) if kernel_large_m.tma_ready(x_q) and kernel_large_m.tma_ready(w_q) else None


def _small_m(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits, fp8, y, config=None):
    """M <= 16: one fixed tile (config: BLOCK_N, BLOCK_K, warps, stages, SPLIT_K, SWAP_AB), K split
    across programs so that enough weight bytes are in flight."""
    M, kb = x_q.shape
    N, ko = w_q.shape[0], x_out.shape[1]
    assert M <= 16, "one 16-row tile"
    bn, bk, warps, stages, split, swap = config or SMALL_M_CONFIG
    split = max(1, min(split, triton.cdiv(kb, bk)))
    tiles = triton.cdiv(N, bn)
    partials, counters = y, y
    if split > 1:  # float32 slice per split (written whole, no clearing) and a zeroed counter per tile
        partials = torch.empty((split, M, N), dtype=torch.float32, device=y.device)
        counters = torch.zeros((tiles,), dtype=torch.int32, device=y.device)
    quik_gemm_kernel.fn[(tiles, split)](
        x_q, w_q, x_scale, x_zero, w_scale, w_sum, x_out, w_out, y, partials, counters,
        M, N, kb, triton.cdiv(triton.cdiv(kb, split), bk) * bk, ko, 16, x_q.stride(0), w_q.stride(0), max(1, x_out.stride(0)), max(1, w_out.stride(0)),
        y.stride(0), BITS=bits, USE_FP8=fp8, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, SPLIT_K=split,
        SWAP_AB=swap, num_warps=warps, num_stages=stages,
    )
    return y


def matmul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits: int = 4,
           compute: str = "int8", unpacked: bool = False) -> torch.Tensor:
    """Triton version of reference.quik_matmul; output in x_out's dtype.

    unpacked: x_q already holds one code per element (quantize(..., codes=)), large M only."""
    M = x_q.shape[0]
    N = w_q.shape[0]
    ko = x_out.shape[1]
    assert w_out.shape == (N, ko) and compute in ("int8", "fp8")
    fp8 = compute == "fp8" and bits == 4
    if M >= LARGE_M:
        pair = _large_m_codes(x_q, w_q, bits, fp8, unpacked)
        if pair is not None:
            return kernel_large_m.matmul_codes(pair[0], x_scale, x_zero, x_out, pair[1], w_scale, w_sum, w_out)
    kb = x_q.shape[1]
    assert w_q.shape[1] == kb
    if M == 1:
        return _gemv(None, None, x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits, x_out.dtype)
    y = torch.empty((M, N), dtype=x_out.dtype, device=x_q.device)
    if M <= 16:  # fixed config: no autotuner dispatch on the decode path
        return _small_m(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits, fp8, y)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    quik_gemm_kernel[grid](
        x_q, w_q, x_scale, x_zero, w_scale, w_sum, x_out, w_out, y, y, y, M, N, kb, kb, ko, min(next_pow2(M), 4096),
        x_q.stride(0), w_q.stride(0), max(1, x_out.stride(0)), max(1, w_out.stride(0)), y.stride(0),
        BITS=bits, USE_FP8=fp8,
    )
    return y


def linear(x: torch.Tensor, w, compute: str = "int8") -> torch.Tensor:
    """QUIK linear on the GPU: quantize the activations, then the fused GEMM (w: QuikWeights).

    One token (decode) is a single launch: quantization fused into the GEMV. Many tokens with
    4-bit codes: the activations are quantized straight to one code per byte for the TMA GEMM."""
    if x.shape[0] == 1 and x.stride(1) == 1 and FUSE_M1:
        return _gemv(x, w.perm, None, None, None, None, w.packed, w.scale, w.wsum, w.outliers, w.bits, x.dtype)
    unpacked = x.shape[0] >= LARGE_M and w.bits == 4
    codes = kernel_large_m.code_dtype(compute == "fp8") if unpacked else None
    xq, sx, zx, xo = quantize(x, w.perm, w.n_outliers, w.bits, codes)
    return matmul(xq, sx, zx, xo, w.packed, w.scale, w.wsum, w.outliers, w.bits, compute, unpacked)


from . import kernel_large_m  # noqa: E402  (last: it imports this module's _epilogue and _tile)
