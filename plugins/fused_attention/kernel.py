"""Triton kernels for fused attention: FlashAttention-style prefill and split-K decode.

Prefill: one program per (query block, batch x query head), Q/K/V read through TMA
descriptors. Causal blocks left of the diagonal run without masks; the diagonal blocks,
and every block of the sliding-window path, are masked. With a window, the key loop
covers only the sink keys plus the window, so the work per query is flat in sequence length.

Decode (FlashDecoding): the cache of each sequence is split into ``num_splits``
chunks by its own length. A program handles one (chunk, batch x KV head) and all
``Hq / Hkv`` query heads of the group at once, so each K/V byte is read once. A
second kernel merges the chunks with their log-sum-exp.
"""

from __future__ import annotations

import math

import torch

from .._triton import interpreting, next_pow2, require_triton, tma_aligned

triton = require_triton()
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634



@triton.jit
def _attn_loop(acc, l_i, m_i, q, k_desc, v_desc, b, hkv, qpos, qk_scale, lo, hi, key_end, window, sinks,
               HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, WINDOWED: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        kpos = start_n + offs_n  # (BN,)
        k = k_desc.load([b, hkv, start_n, 0]).reshape([BLOCK_N, HEAD_D])  # TMA: zeros past Skv
        qk = tl.dot(q, k.T)  # (BM, BN)
        if MASKED:
            vis = (kpos[None, :] <= qpos[:, None]) & (kpos < key_end)[None, :]
            if WINDOWED:
                vis &= ((qpos[:, None] - kpos[None, :]) < window) | (kpos[None, :] < sinks)
            qk = tl.where(vis, qk, float("-inf"))
        # the scale rides on the max and the exponent's FMA (log2 domain) instead of its own pass
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([b, hkv, start_n, 0]).reshape([BLOCK_N, HEAD_D])  # (BN, D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    return acc, l_i, m_i


def _set_prefill_blocks(nargs):
    d = nargs["HEAD_D"]
    nargs["q_desc"].block_shape = [1, 1, nargs["BLOCK_M"], d]
    nargs["k_desc"].block_shape = [1, 1, nargs["BLOCK_N"], d]
    nargs["v_desc"].block_shape = [1, 1, nargs["BLOCK_N"], d]


def _prefill_configs():
    # samples/tuning/sweep_prefill.py (H200 and H100): 64 x 64 on 4 warps is the best TMA tile for
    # D = 128 causal, 128 x 128 on 8 the runner-up; the others cover smaller head dims
    tiles = [(64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3)]
    if interpreting():
        tiles = [(16, 16, 4, 1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, pre_hook=_set_prefill_blocks)
            for bm, bn, w, st in tiles]


@triton.autotune(configs=_prefill_configs(), key=["HEAD_D", "WINDOWED", "LONG"])
@triton.jit
def prefill_kernel(q_desc, k_desc, v_desc, O, qk_scale, Sq, Skv, Hq, G, window, sinks, sob, soh, sos,
                   HEAD_D: tl.constexpr, WINDOWED: tl.constexpr, LONG: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Q, K, V are read through 4-D TMA descriptors over (B, H, S, D): a block past the end of
    a sequence comes back as zeros, so only the causal / window visibility is masked."""
    num_m = tl.cdiv(Sq, BLOCK_M)
    start_m = num_m - 1 - tl.program_id(0)  # longest rows first
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hkv = h // G
    offset = Skv - Sq  # absolute position of query row 0
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = q_desc.load([b, h, start_m * BLOCK_M, 0]).reshape([BLOCK_M, HEAD_D])  # (BM, D)
    qpos = offset + offs_m
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    first_q = offset + start_m * BLOCK_M
    hi = tl.minimum(first_q + BLOCK_M, Skv)
    if WINDOWED:
        lo = tl.maximum(first_q - window + 1, 0) // BLOCK_N * BLOCK_N
        sink_hi = tl.minimum(sinks, lo)
        acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, k_desc, v_desc, b, hkv, qpos, qk_scale,
                                   0, sink_hi, sink_hi, window, sinks, HEAD_D, BLOCK_N, True, False)
        acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, k_desc, v_desc, b, hkv, qpos, qk_scale,
                                   lo, hi, Skv, window, sinks, HEAD_D, BLOCK_N, True, True)
    else:
        diag = first_q // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, k_desc, v_desc, b, hkv, qpos, qk_scale,
                                   0, diag, Skv, window, sinks, HEAD_D, BLOCK_N, False, False)
        acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, k_desc, v_desc, b, hkv, qpos, qk_scale,
                                   diag, hi, Skv, window, sinks, HEAD_D, BLOCK_N, True, False)
    out = acc / l_i[:, None]
    offs_d = tl.arange(0, HEAD_D)
    o_ptrs = O + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < Sq)

@triton.jit
def _attn_loop_pointers(acc, l_i, m_i, q, k_rows, v_rows, sks, svs, Skv, qpos, qk_scale, lo, hi, key_end, window,
                        sinks, HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                        WINDOWED: tl.constexpr):
    """_attn_loop reading K and V through pointers (k_rows, v_rows: the (b, hkv) head's row 0) instead of TMA
    descriptors, keys past Skv read as zeros as TMA returns them: for the AOT entry, which gets no host-made
    descriptors."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    for start_n in range(lo, hi, BLOCK_N):
        kpos = start_n + offs_n  # (BN,)
        inside = kpos < Skv
        k = tl.load(k_rows + kpos[:, None].to(tl.int64) * sks + offs_d[None, :], mask=inside[:, None], other=0.0)
        qk = tl.dot(q, k.T)  # (BM, BN)
        if MASKED:
            vis = (kpos[None, :] <= qpos[:, None]) & (kpos < key_end)[None, :]
            if WINDOWED:
                vis &= ((qpos[:, None] - kpos[None, :]) < window) | (kpos[None, :] < sinks)
            qk = tl.where(vis, qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_rows + kpos[:, None].to(tl.int64) * svs + offs_d[None, :], mask=inside[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def prefill_entry(Q, K, V, Sq, Skv, Hq, G, window, sinks, sqb, sqh, sqs, skb, skh, sks, svb, svh, svs,
                  sob, soh, sos, O, QK_SCALE: tl.constexpr, HEAD_D: tl.constexpr, WINDOWED: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """FusedAttentionPrefill's TensorRT AOT entry point (plugins/aot.py): inputs, scalars, output. prefill_kernel's
    blocks and loops (grid (cdiv(Sq, BLOCK_M), B * Hq), longest rows first), with Q, K, V read through pointers."""
    num_m = tl.cdiv(Sq, BLOCK_M)
    start_m = num_m - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hkv = h // G
    offset = Skv - Sq
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqs + offs_d[None, :],
                mask=(offs_m < Sq)[:, None], other=0.0)  # (BM, D)
    k_rows = K + b64 * skb + hkv * skh
    v_rows = V + b64 * svb + hkv * svh
    qpos = offset + offs_m
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    first_q = offset + start_m * BLOCK_M
    hi = tl.minimum(first_q + BLOCK_M, Skv)
    if WINDOWED:
        lo = tl.maximum(first_q - window + 1, 0) // BLOCK_N * BLOCK_N
        sink_hi = tl.minimum(sinks, lo)
        acc, l_i, m_i = _attn_loop_pointers(acc, l_i, m_i, q, k_rows, v_rows, sks, svs, Skv, qpos, QK_SCALE,
                                            0, sink_hi, sink_hi, window, sinks, HEAD_D, BLOCK_N, True, False)
        acc, l_i, m_i = _attn_loop_pointers(acc, l_i, m_i, q, k_rows, v_rows, sks, svs, Skv, qpos, QK_SCALE,
                                            lo, hi, Skv, window, sinks, HEAD_D, BLOCK_N, True, True)
    else:
        diag = first_q // BLOCK_N * BLOCK_N
        acc, l_i, m_i = _attn_loop_pointers(acc, l_i, m_i, q, k_rows, v_rows, sks, svs, Skv, qpos, QK_SCALE,
                                            0, diag, Skv, window, sinks, HEAD_D, BLOCK_N, False, False)
        acc, l_i, m_i = _attn_loop_pointers(acc, l_i, m_i, q, k_rows, v_rows, sks, svs, Skv, qpos, QK_SCALE,
                                            diag, hi, Skv, window, sinks, HEAD_D, BLOCK_N, True, False)
    out = acc / l_i[:, None]
    o_ptrs = O + b64 * sob + h * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < Sq)


def _decode_configs():
    if interpreting():
        return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3),
    ]

@triton.autotune(configs=_decode_configs(), key=["HEAD_D", "G_PAD", "NUM_SPLITS"])
@triton.jit
def decode_split_kernel(Q, K, V, L, Opart, LSEpart, GROUPS, qk_scale, Hq, NG,
                        sqb, sqh, skb, skh, sks, svb, svh, svs,
                        NUM_SPLITS: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
                        HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_GROUPS: tl.constexpr,
                        TMA: tl.constexpr = False, STORE_LSE: tl.constexpr = True,
                        GROUP_DIV: tl.constexpr = 1):
    # NG KV groups per sequence: all Hkv heads, or the selected ones listed in GROUPS (B, NG) as KV heads
    # times GROUP_DIV (sparse_heads lists its selected query heads there, GROUP_DIV = Hq / Hkv).
    # TMA: K and V are 4-D descriptors over the caches (B, Hkv, Smax, D) instead of pointers.
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NG
    slot = bh % NG  # query heads slot*G ... slot*G + G-1
    if HAS_GROUPS:
        hkv = tl.load(GROUPS + bh) // GROUP_DIV
    else:
        hkv = slot
    seqlen = tl.load(L + b)
    per_split = tl.cdiv(tl.cdiv(seqlen, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, seqlen)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, HEAD_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = slot * G + offs_g  # (G_PAD,) query heads of this KV group
    q = tl.load(Q + b.to(tl.int64) * sqb + heads[:, None] * sqh + offs_d[None, :],
                mask=offs_g[:, None] < G, other=0.0)  # (G_PAD, D)
    if not TMA:
        k_ptrs = K + b.to(tl.int64) * skb + hkv * skh + offs_n[None, :] * sks + offs_d[:, None]
        v_ptrs = V + b.to(tl.int64) * svb + hkv * svh + offs_n[:, None] * svs + offs_d[None, :]
    m_i = tl.full([G_PAD], -1.0e30, tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, HEAD_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        kin = (start_n + offs_n) < hi
        if TMA:
            k = K.load([b, hkv, start_n, 0]).reshape([BLOCK_N, HEAD_D]).T  # (D, BN)
        else:
            k = tl.load(k_ptrs + start_n * sks, mask=kin[None, :], other=0.0)  # (D, BN)
        qk = tl.dot(q, k) * qk_scale
        qk = tl.where(kin[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        if TMA:  # cache slots past the length may hold anything (NaN * 0 is NaN): zero them
            v = tl.where(kin[:, None], V.load([b, hkv, start_n, 0]).reshape([BLOCK_N, HEAD_D]), 0.0)
        else:
            v = tl.load(v_ptrs + start_n * svs, mask=kin[:, None], other=0.0)  # (BN, D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    has = l_i > 0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    row = (b * Hq + heads) * NUM_SPLITS + split  # (G_PAD,)
    gm = offs_g < G
    tl.store(Opart + row[:, None].to(tl.int64) * HEAD_D + offs_d[None, :], out, mask=gm[:, None])
    if STORE_LSE:
        tl.store(LSEpart + row, lse, mask=gm)


_decode_split_body = decode_split_kernel.fn  # the JIT function under the autotuner


@triton.jit
def decode_entry(Q, K, V, L, Hq, NG, sqb, sqh, skb, skh, sks, svb, svh, svs, O,
                 QK_SCALE: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, HEAD_D: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """FusedAttentionDecode's TensorRT AOT entry point (plugins/aot.py): inputs, scalars, output, one launch.
    It is the split kernel with one split: its float32 partial rows, (b * Hq + head) * 1 + 0, are O's own
    contiguous [B, Hq, D] rows, so the normalized output is cast and stored straight into O (the combine of
    one split is the identity), and no log-sum-exp is kept. Grid (1, B * Hkv)."""
    _decode_split_body(Q, K, V, L, O, O, L, QK_SCALE, Hq, NG, sqb, sqh, skb, skh, sks, svb, svh, svs,
                       1, G, G_PAD, HEAD_D, BLOCK_N, False, False, False)

@triton.jit
def decode_combine_kernel(Opart, LSEpart, O, Hq, sob, soh,
                          NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_D: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // Hq
    h = bh % Hq
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_D)
    sm = offs_s < NUM_SPLITS
    lse = tl.load(LSEpart + bh * NUM_SPLITS + offs_s, mask=sm, other=float("-inf"))
    w = tl.math.exp2(lse - tl.max(lse, 0))  # (S,)
    o = tl.load(Opart + (bh * NUM_SPLITS + offs_s)[:, None].to(tl.int64) * HEAD_D + offs_d[None, :],
                mask=sm[:, None], other=0.0)  # (S, D)
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(O + b.to(tl.int64) * sob + h * soh + offs_d, out.to(O.dtype.element_ty))



def _qk_scale(scale: float, d: int) -> float:
    return (scale if scale > 0 else 1.0 / math.sqrt(d)) * LOG2E


def _check_common(q, k, v):
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert q.shape[-1] in (16, 32, 64, 128, 256), "head dim must be a power of two in [16, 256]"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "head dim must be contiguous"


def _descriptor(t: torch.Tensor, block_rows: int):
    """A 4-D TMA descriptor over t (B, H, S, D), blocks of (1, 1, block_rows, D).

    TMA needs a 16-byte aligned base and 16-byte multiples for every stride but the last:
    a size-1 dimension's stride is never used, so it is replaced; anything else unaligned
    (an offset view, an odd stride) is read from an aligned contiguous copy."""
    from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: PLC0415

    strides = [st if n > 1 else t.shape[i + 1:].numel() for i, (n, st) in enumerate(zip(t.shape, t.stride()))]
    if not tma_aligned(t, strides):
        t = t.clone(memory_format=torch.contiguous_format)
        strides = list(t.stride())
    return TensorDescriptor(t, list(t.shape), strides, [1, 1, block_rows, t.shape[-1]])


def prefill(q, k, v, scale: float = 0.0, window: int = 0, sinks: int = 0, config=None) -> torch.Tensor:
    """Triton causal prefill attention; see reference.attention_prefill.

    config: (BLOCK_M, BLOCK_N, warps, stages) instead of the autotuner (sweeps)."""
    _check_common(q, k, v)
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    assert Hq % Hkv == 0 and Skv >= Sq
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if o.numel() == 0:
        return o
    # block rows are placeholders: the autotuner's pre_hook sets each config's
    q_desc, k_desc, v_desc = (_descriptor(t, 16) for t in (q, k, v))
    args = (q_desc, k_desc, v_desc, o, _qk_scale(scale, D), Sq, Skv, Hq, Hq // Hkv, window, sinks,
            o.stride(0), o.stride(1), o.stride(2))
    flags = dict(HEAD_D=D, WINDOWED=window > 0, LONG=Sq >= 1024)
    if config is None:
        prefill_kernel[lambda meta: (triton_cdiv(Sq, meta["BLOCK_M"]), B * Hq)](*args, **flags)
        return o
    bm, bn, warps, stages = config
    _set_prefill_blocks(dict(q_desc=q_desc, k_desc=k_desc, v_desc=v_desc, BLOCK_M=bm, BLOCK_N=bn, HEAD_D=D))
    prefill_kernel.fn[(triton_cdiv(Sq, bm), B * Hq)](*args, **flags, BLOCK_M=bm, BLOCK_N=bn,
                                                     num_warps=warps, num_stages=stages)
    return o


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def default_num_splits(batch_kv_heads: int, smax: int, device) -> int:
    """Enough chunks for about one program per SM, none shorter than 256 keys.

    H100 sweep (samples/tuning/sweep_decode.py): B=16, 8 kv heads, 4k keys is fastest at 2 splits
    (106 us; 114 us at the 5 that four programs per SM gave); B=1 at 32k keys took 62 us at 16 splits,
    64 us at 33 and 66 us at the old 66 (this formula gives 17: 65 us in bench_kernels.py).
    """
    sms = 132 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton_cdiv(sms, batch_kv_heads), triton_cdiv(smax, 256)))


# (BLOCK_N, num_warps, num_stages, TMA) of the split kernel: fixed (autotuning it gave a different
# pick from run to run for one long sequence, up to 1.5x apart); the sweep's best for both cases
DECODE_CONFIG = (64, 4, 3, False)  # (+ TMA descriptors for K/V)


def decode(q, k_cache, v_cache, seq_lens, scale: float = 0.0, num_splits: int = 0,
           groups: torch.Tensor | None = None, config=None, group_div: int = 1) -> torch.Tensor:
    """Triton split-K decode attention; see reference.attention_decode.

    With ``groups (B, h) int32``, only KV heads ``groups[b] // group_div`` are used and q holds
    their query heads only: q ``(B, h * Hq_per_kv, D)`` (sparse_heads passes its selected query
    heads with ``group_div = Hq / Hkv``).
    """
    _check_common(q, k_cache, v_cache)
    B, Hq, D = q.shape
    Hkv, Smax = k_cache.shape[1], k_cache.shape[2]
    assert seq_lens.dtype == torch.int32 and seq_lens.shape == (B,)
    ng = Hkv if groups is None else groups.shape[1]
    assert Hq % ng == 0
    g = Hq // ng
    if groups is not None:
        assert groups.dtype == torch.int32 and groups.is_contiguous() and groups.shape[0] == B
    splits = num_splits or default_num_splits(B * ng, Smax, q.device)
    block_n, warps, stages, tma = config or DECODE_CONFIG
    kv = (k_cache, v_cache)
    if tma:
        kv = (_descriptor(k_cache, block_n), _descriptor(v_cache, block_n))
    o_part = torch.empty((B * Hq * splits, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((B * Hq * splits,), dtype=torch.float32, device=q.device)
    decode_split_kernel.fn[(splits, B * ng)](
        q, *kv, seq_lens, o_part, lse_part, seq_lens if groups is None else groups,
        _qk_scale(scale, D), Hq, ng,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_SPLITS=splits, G=g, G_PAD=max(16, next_pow2(g)), HEAD_D=D, HAS_GROUPS=groups is not None,
        BLOCK_N=block_n, TMA=tma, GROUP_DIV=group_div, num_warps=warps, num_stages=stages,
    )
    o = torch.empty_like(q)
    decode_combine_kernel[(B * Hq,)](
        o_part, lse_part, o, Hq, o.stride(0), o.stride(1),
        NUM_SPLITS=splits, SPLITS_PAD=max(2, next_pow2(splits)), HEAD_D=D,
    )
    return o
