"""Triton sparse-heads decode attention, three launches that touch only the selected heads:

1. ``q_kernel``: gathered GEMV. A program computes RH rows of the first and RH rows of the
   second half of one selected head's D rows of w_q, adds the bias, rounds to the input
   dtype and applies rotary in float32;
2. the FlashDecoding split-K kernel of fused_attention, one selected head per KV-group slot
   (its query head listed, divided by Hq / Hkv in the kernel);
3. ``oproj_kernel``: gathered GEMV over the selected heads' D-row blocks of w_o [Hq*D, d], one
   head and 256 contiguous outputs per program (float32 partial sums per head, added in order after).

TensorRT embeds one kernel per plugin, so its graph runs the three steps as three ops
(SparseHeadsQProj, SparseHeadsAttend, SparseHeadsOProj; ``tensorrt.py``): ``q_kernel`` as it
is, ``attend_entry`` (the split kernel with one split) and ``oproj_entry`` (each program a block
of outputs over every selected head, so no per-head partials are summed afterwards).
"""

from __future__ import annotations

import torch

from .._triton import interpreting, require_triton
from ..fused_attention import kernel as attn_kernel
from ..fused_attention.kernel import _decode_split_body

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def q_kernel(X, WQ, HEADS, BQ, COS, SIN, d, h, QB,
             HAS_BIAS: tl.constexpr, ROTARY: tl.constexpr, HALF: tl.constexpr, RH: tl.constexpr,
             BLOCK_D: tl.constexpr):
    # Parameters in the TensorRT AOT order (inputs, scalars, output): SparseHeadsQProj's entry as well.
    bs = tl.program_id(0)  # b * h + slot
    b = bs // h
    head = tl.load(HEADS + bs)
    offs_r = tl.program_id(1) * RH + tl.arange(0, RH)  # rows within each half
    offs_d = tl.arange(0, BLOCK_D)
    w = WQ + head.to(tl.int64) * (2 * HALF) * d
    acc1 = tl.zeros([RH], tl.float32)
    acc2 = tl.zeros([RH], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        x = tl.load(X + b * d + d0 + offs_d).to(tl.float32)  # (BD,)
        w1 = tl.load(w + offs_r[:, None] * d + d0 + offs_d[None, :])  # (RH, BD)
        w2 = tl.load(w + (HALF + offs_r)[:, None] * d + d0 + offs_d[None, :])
        acc1 += tl.sum(w1.to(tl.float32) * x[None, :], 1)
        acc2 += tl.sum(w2.to(tl.float32) * x[None, :], 1)
    if HAS_BIAS:
        acc1 += tl.load(BQ + head * (2 * HALF) + offs_r).to(tl.float32)
        acc2 += tl.load(BQ + head * (2 * HALF) + HALF + offs_r).to(tl.float32)
    a1 = acc1.to(X.dtype.element_ty).to(tl.float32)  # the projection's output dtype
    a2 = acc2.to(X.dtype.element_ty).to(tl.float32)
    if ROTARY:
        c = tl.load(COS + b * HALF + offs_r)
        s = tl.load(SIN + b * HALF + offs_r)
        r1 = a1 * c - a2 * s
        a2 = a2 * c + a1 * s
        a1 = r1
    dst = QB + bs.to(tl.int64) * (2 * HALF)
    tl.store(dst + offs_r, a1.to(QB.dtype.element_ty))
    tl.store(dst + HALF + offs_r, a2.to(QB.dtype.element_ty))


@triton.jit
def oproj_kernel(A, WO, HEADS, PART, d, h, D: tl.constexpr, BLOCK_O: tl.constexpr):
    # One selected head and BLOCK_O outputs per program (wide rows: BLOCK_O contiguous values of each of the
    # head's D rows of w_o); the per-head partial sums are added afterwards, in a fixed order.
    bi = tl.program_id(1)  # b * h + slot
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = offs_o < d
    offs_e = tl.arange(0, D)
    head = tl.load(HEADS + bi)
    a = tl.load(A + bi.to(tl.int64) * D + offs_e).to(tl.float32)  # (D,)
    rows = (head * D + offs_e).to(tl.int64)  # (D,) rows of w_o, each contiguous over the outputs
    w = tl.load(WO + rows[:, None] * d + offs_o[None, :], mask=om[None, :], other=0.0)  # (D, BO)
    tl.store(PART + bi.to(tl.int64) * d + offs_o, tl.sum(w.to(tl.float32) * a[:, None], 0), mask=om)


@triton.jit
def attend_entry(Q, K, V, L, HEADS, NG, sqb, sqh, skb, skh, sks, svb, svh, svs, O,
                 QK_SCALE: tl.constexpr, GROUP: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """SparseHeadsAttend (TensorRT AOT entry): fused_attention's split kernel with one split and one query
    head per slot, its KV head HEADS[b, i] // GROUP, the output cast straight into O (B, NG, D), as
    fused_attention's decode_entry. Grid (1, B * NG)."""
    _decode_split_body(Q, K, V, L, O, O, HEADS, QK_SCALE, NG, NG, sqb, sqh, skb, skh, sks, svb, svh, svs,
                       1, 1, 16, HEAD_D, BLOCK_N, True, False, False, GROUP)


@triton.jit
def oproj_entry(A, WO, HEADS, d, h, Y, D: tl.constexpr, BLOCK_O: tl.constexpr):
    """SparseHeadsOProj (TensorRT AOT entry): one program per BLOCK_O outputs of one sequence, over every
    selected head in slot order (its D rows of w_o, BLOCK_O contiguous values each), rounded once.
    Grid (cdiv(d, BLOCK_O), B)."""
    b = tl.program_id(1)
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = offs_o < d
    offs_e = tl.arange(0, D)
    acc = tl.zeros([BLOCK_O], tl.float32)
    for slot in range(0, h):
        bi = b * h + slot
        head = tl.load(HEADS + bi)
        a = tl.load(A + bi.to(tl.int64) * D + offs_e).to(tl.float32)  # (D,)
        rows = (head * D + offs_e).to(tl.int64)
        w = tl.load(WO + rows[:, None] * d + offs_o[None, :], mask=om[None, :], other=0.0)  # (D, BO)
        acc += tl.sum(w.to(tl.float32) * a[:, None], 0)
    tl.store(Y + b.to(tl.int64) * d + offs_o, acc.to(Y.dtype.element_ty), mask=om)


RH = 8  # rows of each half of a head per q_kernel program
OPROJ_BLOCK_O = 32  # oproj_entry's outputs per program: 128 programs at d = 4096, batch 1


def q_block_d(d: int) -> int:
    return 32 if interpreting() else (1024 if d % 1024 == 0 else 256)


def q_proj(x, w_q, heads, b_q=None, cos=None, sin=None, head_dim: int = 0) -> torch.Tensor:
    """(B, h, D): the selected heads' rotated queries (q_kernel)."""
    B, d = x.shape
    h, D = heads.shape[1], head_dim
    for t in (x, w_q, heads):
        assert t.is_contiguous()
    assert heads.dtype == torch.int32
    rotary = cos is not None
    cos = cos.float().contiguous() if rotary else x  # (B, D/2); x is a placeholder pointer when unused
    sin = sin.float().contiguous() if rotary else x
    qbuf = torch.empty((B, h, D), dtype=x.dtype, device=x.device)
    bd = q_block_d(d)
    assert d % bd == 0 and (D // 2) % RH == 0, "d must be a multiple of 256 and D/2 of 8"
    q_kernel[(B * h, D // 2 // RH)](x, w_q, heads, b_q if b_q is not None else x, cos, sin, d, h, qbuf,
                                    HAS_BIAS=b_q is not None, ROTARY=rotary, HALF=D // 2, RH=RH, BLOCK_D=bd,
                                    num_warps=4)
    return qbuf


def attend(q, k_cache, v_cache, seq_lens, heads, scale: float = 0.0, group: int = 1) -> torch.Tensor:
    """(B, h, D): split-K decode attention, slot i over KV head heads[:, i] // group."""
    assert heads.dtype == seq_lens.dtype == torch.int32 and heads.is_contiguous()
    return attn_kernel.decode(q, k_cache, v_cache, seq_lens, scale, groups=heads, group_div=group)


def o_proj(attn, w_o, heads) -> torch.Tensor:
    """(B, d) in attn's dtype (oproj_entry)."""
    B, h, D = attn.shape
    d = w_o.shape[1]
    for t in (attn, w_o, heads):
        assert t.is_contiguous()
    y = torch.empty((B, d), dtype=attn.dtype, device=attn.device)
    bo = 16 if interpreting() else OPROJ_BLOCK_O
    oproj_entry[(triton.cdiv(d, bo), B)](attn, w_o, heads, d, h, y, D=D, BLOCK_O=bo, num_warps=4)
    return y


def sparse_heads_decode(x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q=None, cos=None, sin=None,
                        scale: float = 0.0) -> torch.Tensor:
    B, d = x.shape
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    G = w_q.shape[0] // (Hkv * D)
    h = heads.shape[1]
    assert w_o.is_contiguous() and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    qbuf = q_proj(x, w_q, heads, b_q, cos, sin, D)
    attn = attend(qbuf, k_cache, v_cache, seq_lens, heads, scale, G)  # (B, h, D)
    part = torch.empty((B, h, d), dtype=torch.float32, device=x.device)
    bo = 16 if interpreting() else 256
    oproj_kernel[(triton.cdiv(d, bo), B * h)](attn, w_o, heads, part, d, h, D=D, BLOCK_O=bo, num_warps=8)
    return part.sum(1).to(x.dtype)
