"""Triton sparse-heads decode attention, three launches that touch only the selected groups:

1. ``qkv_kernel``: gathered GEMV. A program computes RH rows of the first and RH rows
   of the second half of one D-row block (a query head, the K head or the V head of a
   selected group), rounds to the input dtype, applies rotary to q/k in float32, and
   writes q to a small buffer and k/v straight into the cache slot;
2. the FlashDecoding split-K kernel of fused_attention, with a group list;
3. ``oproj_kernel``: gathered GEMV over the selected heads' D-column blocks of w_o.
"""

from __future__ import annotations

import torch

from .._triton import interpreting, require_triton
from ..fused_attention import kernel as attn_kernel

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def qkv_kernel(X, WQ, WK, WV, COS, SIN, GROUPS, POS, QB, KC, VC, d, h,
               skcb, skch, skcs, svcb, svch, svcs,
               G: tl.constexpr, HALF: tl.constexpr, RH: tl.constexpr, BLOCK_D: tl.constexpr):
    bs = tl.program_id(0)  # b * h + slot
    part = tl.program_id(1)  # 0..G-1: query heads of the group, G: key, G+1: value
    b = bs // h
    grp = tl.load(GROUPS + bs)
    offs_r = tl.program_id(2) * RH + tl.arange(0, RH)  # rows within each half
    offs_d = tl.arange(0, BLOCK_D)
    if part < G:
        w = WQ + (grp * G + part).to(tl.int64) * (2 * HALF) * d
    elif part == G:
        w = WK + grp.to(tl.int64) * (2 * HALF) * d
    else:
        w = WV + grp.to(tl.int64) * (2 * HALF) * d
    acc1 = tl.zeros([RH], tl.float32)
    acc2 = tl.zeros([RH], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        x = tl.load(X + b * d + d0 + offs_d).to(tl.float32)  # (BD,)
        w1 = tl.load(w + offs_r[:, None] * d + d0 + offs_d[None, :])  # (RH, BD)
        w2 = tl.load(w + (HALF + offs_r)[:, None] * d + d0 + offs_d[None, :])
        acc1 += tl.sum(w1.to(tl.float32) * x[None, :], 1)
        acc2 += tl.sum(w2.to(tl.float32) * x[None, :], 1)
    a1 = acc1.to(X.dtype.element_ty).to(tl.float32)  # the projection's output dtype
    a2 = acc2.to(X.dtype.element_ty).to(tl.float32)
    if part <= G:  # rotary on q and k
        c = tl.load(COS + b * HALF + offs_r)
        s = tl.load(SIN + b * HALF + offs_r)
        r1 = a1 * c - a2 * s
        a2 = a2 * c + a1 * s
        a1 = r1
    pos = tl.load(POS + b)
    if part < G:
        dst = QB + (bs * G + part).to(tl.int64) * (2 * HALF)
    elif part == G:
        dst = KC + b.to(tl.int64) * skcb + grp * skch + pos * skcs
    else:
        dst = VC + b.to(tl.int64) * svcb + grp * svch + pos * svcs
    tl.store(dst + offs_r, a1.to(KC.dtype.element_ty))
    tl.store(dst + HALF + offs_r, a2.to(KC.dtype.element_ty))


@triton.jit
def oproj_kernel(A, WO, GROUPS, Y, d, h, HQD,
                 G: tl.constexpr, D: tl.constexpr, BLOCK_O: tl.constexpr):
    b = tl.program_id(1)
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = offs_o < d
    offs_e = tl.arange(0, D)
    acc = tl.zeros([BLOCK_O], tl.float32)
    for i in range(0, h * G):
        head = tl.load(GROUPS + b * h + i // G) * G + i % G
        a = tl.load(A + (b * h * G + i).to(tl.int64) * D + offs_e).to(tl.float32)  # (D,)
        w = tl.load(WO + offs_o[:, None].to(tl.int64) * HQD + head * D + offs_e[None, :], mask=om[:, None], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a[None, :], 1)
    tl.store(Y + b * d + offs_o, acc.to(Y.dtype.element_ty), mask=om)


def sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, positions, groups) -> torch.Tensor:
    B, d = x.shape
    Hkv, C, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    G = w_q.shape[0] // (Hkv * D)
    h = groups.shape[1]
    for t in (x, w_q, w_k, w_v, w_o, groups):
        assert t.is_contiguous()
    assert groups.dtype == positions.dtype == torch.int32 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    cos, sin = cos.float().contiguous(), sin.float().contiguous()  # (B, D/2)
    qbuf = torch.empty((B, h * G, D), dtype=x.dtype, device=x.device)
    # Tiles from an H100 sweep at d=4096, 16 of 32 heads (D=128): QKV 8 rotary rows x 1024 columns per program
    # (29.6 us vs 64.4 us for 32 x 256: 4x the programs in flight), o_proj 8 outputs per program on 8 warps
    # (14.4 us vs 29.7 us for 32 on 4).
    rh = 8
    bd = 32 if interpreting() else (1024 if d % 1024 == 0 else 256)
    assert d % bd == 0 and (D // 2) % rh == 0, "d must be a multiple of 256 and D/2 of 8"
    qkv_kernel[(B * h, G + 2, D // 2 // rh)](
        x, w_q, w_k, w_v, cos, sin, groups, positions, qbuf, k_cache, v_cache, d, h,
        *k_cache.stride()[:3], *v_cache.stride()[:3], G=G, HALF=D // 2, RH=rh, BLOCK_D=bd, num_warps=4,
    )
    attn = attn_kernel.decode(qbuf, k_cache, v_cache, positions + 1, groups=groups)  # (B, h*G, D)
    y = torch.empty((B, d), dtype=x.dtype, device=x.device)
    bo = 16 if interpreting() else 8
    oproj_kernel[(triton.cdiv(d, bo), B)](attn, w_o, groups, y, d, h, w_o.shape[1], G=G, D=D, BLOCK_O=bo,
                                          num_warps=4 if interpreting() else 8)
    return y
