"""Triton KV-cache update: one program copies a (BLOCK_S, D) tile of new K and V rows of one
(batch, KV head) into their cache slots, rotating K on the way when cos/sin are given."""

from __future__ import annotations

import torch

from .._triton import interpreting, require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def kv_update_kernel(KC, VC, KN, VN, P, COS, SIN, S, H, C, sinks,
                     skcb, skch, skcs, svcb, svch, svcs, sknb, sknh, skns, svnb, svnh, svns, scb, scs,
                     HALF_D: tl.constexpr, BLOCK_S: tl.constexpr, ROLLING: tl.constexpr, ROTARY: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HALF_D)
    pos = tl.load(P + b) + offs_s  # (BS,) absolute positions
    valid = offs_s < S
    if ROLLING:
        window = C - sinks
        slot = tl.where(pos < sinks, pos, sinks + (pos - sinks) % window)
        last = tl.load(P + b) + S - 1
        valid &= (pos < sinks) | (pos > last - window)
    else:
        slot = pos
    m = valid[:, None]
    b64 = b.to(tl.int64)
    kn = KN + b64 * sknb + h * sknh + offs_s[:, None] * skns + offs_d[None, :]
    vn = VN + b64 * svnb + h * svnh + offs_s[:, None] * svns + offs_d[None, :]
    k1 = tl.load(kn, mask=m)
    k2 = tl.load(kn + HALF_D, mask=m)
    v1 = tl.load(vn, mask=m)
    v2 = tl.load(vn + HALF_D, mask=m)
    if ROTARY:
        cs = b64 * scb + offs_s[:, None] * scs + offs_d[None, :]
        c = tl.load(COS + cs, mask=m)
        s = tl.load(SIN + cs, mask=m)
        k1f = k1.to(tl.float32)
        k2f = k2.to(tl.float32)
        k1 = k1f * c - k2f * s
        k2 = k2f * c + k1f * s
    kc = KC + b64 * skcb + h * skch + slot[:, None].to(tl.int64) * skcs + offs_d[None, :]
    vc = VC + b64 * svcb + h * svch + slot[:, None].to(tl.int64) * svcs + offs_d[None, :]
    tl.store(kc, k1.to(KC.dtype.element_ty), mask=m)
    tl.store(kc + HALF_D, k2.to(KC.dtype.element_ty), mask=m)
    tl.store(vc, v1.to(VC.dtype.element_ty), mask=m)
    tl.store(vc + HALF_D, v2.to(VC.dtype.element_ty), mask=m)


@triton.jit
def kv_update_entry(KC, VC, KN, VN, P, COS, SIN, S, H, C, sinks,
                    skcb, skch, skcs, svcb, svch, svcs, sknb, sknh, skns, svnb, svnh, svns, scb, scs, KC_OUT, VC_OUT,
                    HALF_D: tl.constexpr, BLOCK_S: tl.constexpr, ROLLING: tl.constexpr, ROTARY: tl.constexpr):
    """The TensorRT AOT entry point (plugins/aot.py): inputs, scalars, then the outputs, which
    alias the caches, so the rows are written through them."""
    kv_update_kernel(KC_OUT, VC_OUT, KN, VN, P, COS, SIN, S, H, C, sinks,
                     skcb, skch, skcs, svcb, svch, svcs, sknb, sknh, skns, svnb, svnh, svns, scb, scs,
                     HALF_D, BLOCK_S, ROLLING, ROTARY)


BLOCK_S = 32  # new rows per program (16 on the interpreter)


def kv_cache_update(k_cache, v_cache, k_new, v_new, positions, cos=None, sin=None,
                    rolling: bool = False, sinks: int = 0) -> None:
    B, H, S, D = k_new.shape
    C = k_cache.shape[2]
    assert k_cache.shape == v_cache.shape == (B, H, C, D) and v_new.shape == k_new.shape
    assert positions.dtype == torch.int32 and D % 2 == 0 and (D // 2) & (D // 2 - 1) == 0
    for t in (k_cache, v_cache, k_new, v_new):
        assert t.stride(-1) == 1, "head dim must be contiguous"
    rotary = cos is not None
    if rotary:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()  # (B, S, D/2)
    else:
        cos = sin = k_new  # unused
    block_s = 16 if interpreting() else BLOCK_S
    kv_update_kernel[(B * H, triton.cdiv(S, block_s))](
        k_cache, v_cache, k_new, v_new, positions, cos, sin, S, H, C, sinks,
        *k_cache.stride()[:3], *v_cache.stride()[:3], *k_new.stride()[:3], *v_new.stride()[:3],
        cos.stride(0) if rotary else 0, cos.stride(1) if rotary else 0,
        HALF_D=D // 2, BLOCK_S=block_s, ROLLING=bool(rolling), ROTARY=rotary,
        num_warps=4,
    )
