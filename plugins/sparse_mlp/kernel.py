"""Triton sparse MLP for decode: one program takes a block of a sequence's selected neurons,
gathers their gate/up rows (contiguous, d elements each), computes silu(gate)*up in float32,
then gathers the same neurons' rows of down_proj^T and adds h_j * row_j into a float32
output with atomics. Every weight byte of a selected neuron is read once; unselected
neurons are never touched."""

from __future__ import annotations

import torch

from .._triton import interpreting, next_pow2, require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def sparse_mlp_kernel(X, WG, WU, WD, IDX, Y, d, k, sxb, sib, syb,
                      BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(1)
    offs_j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = offs_j < k
    rows = tl.load(IDX + b * sib + offs_j, mask=jm, other=0).to(tl.int64)  # (BJ,) neuron ids
    offs_d = tl.arange(0, BLOCK_D)
    gate = tl.zeros([BLOCK_J], tl.float32)
    up = tl.zeros([BLOCK_J], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dm = (d0 + offs_d) < d
        x = tl.load(X + b * sxb + d0 + offs_d, mask=dm, other=0.0).to(tl.float32)  # (BD,)
        m2 = jm[:, None] & dm[None, :]
        g = tl.load(WG + rows[:, None] * d + d0 + offs_d[None, :], mask=m2, other=0.0)  # (BJ, BD)
        u = tl.load(WU + rows[:, None] * d + d0 + offs_d[None, :], mask=m2, other=0.0)
        gate += tl.sum(g.to(tl.float32) * x[None, :], 1)
        up += tl.sum(u.to(tl.float32) * x[None, :], 1)
    h = gate / (1.0 + tl.exp(-gate)) * up  # (BJ,) silu(gate) * up; 0 for padding rows
    for d0 in range(0, d, BLOCK_D):
        dm = (d0 + offs_d) < d
        wd = tl.load(WD + rows[:, None] * d + d0 + offs_d[None, :], mask=jm[:, None] & dm[None, :], other=0.0)
        part = tl.sum(wd.to(tl.float32) * h[:, None], 0)  # (BD,)
        tl.atomic_add(Y + b * syb + d0 + offs_d, part, mask=dm, sem="relaxed")


def sparse_mlp(x, w_gate, w_up, w_down_t, neurons) -> torch.Tensor:
    B, d = x.shape
    k = neurons.shape[1]
    for w in (w_gate, w_up, w_down_t):
        assert w.is_contiguous() and w.shape[1] == d
    assert neurons.dtype == torch.int32 and x.stride(1) == 1
    y = torch.zeros((B, d), dtype=torch.float32, device=x.device)
    # 8 neurons x 1024 hidden per tile, 4 warps: the best of 72 (BLOCK_J, BLOCK_D, warps, stages) on the H100
    # at d=4096, F=11008, 50% (64.8 us vs 75.6 us for 16 x 512; stages 1-3 within 0.1 us, so the default
    # is kept); more programs keep more loads in flight.
    block_j = 8
    block_d = 16 if interpreting() else min(1024, next_pow2(d))
    sparse_mlp_kernel[(triton.cdiv(k, block_j), B)](
        x, w_gate, w_up, w_down_t, neurons, y, d, k, x.stride(0), neurons.stride(0), y.stride(0),
        BLOCK_J=block_j, BLOCK_D=block_d, num_warps=4,
    )
    return y.to(x.dtype)
