"""Triton sparse MLP for decode: one program takes a block of a sequence's selected neurons,
gathers their gate/up rows (contiguous, d elements each), computes silu(gate)*up in float32,
then gathers the same neurons' rows of down_proj^T and adds h_j * row_j into a float32
output with atomics. Every weight byte of a selected neuron is read once; unselected
neurons are never touched.

The same work in two launches with no atomics, one kernel each, is what TensorRT embeds
(``plugins/sparse_mlp/tensorrt.py``): ``gate_up_entry`` writes h per neuron (the same gather as
above), ``down_entry`` gives each program a block of outputs and adds every selected neuron's
row segment in order."""

from __future__ import annotations

import torch

from .._triton import interpreting, next_pow2, require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402


@triton.jit
def _gate_up(X, WG, WU, rows, jm, d, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """silu(x.w_gate[r]) * (x.w_up[r]) for the (BLOCK_J,) neuron ids ``rows`` (masked by ``jm``); X is the
    sequence's row. 0 for masked rows."""
    offs_d = tl.arange(0, BLOCK_D)
    gate = tl.zeros([BLOCK_J], tl.float32)
    up = tl.zeros([BLOCK_J], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dm = (d0 + offs_d) < d
        x = tl.load(X + d0 + offs_d, mask=dm, other=0.0).to(tl.float32)  # (BD,)
        m2 = jm[:, None] & dm[None, :]
        g = tl.load(WG + rows[:, None] * d + d0 + offs_d[None, :], mask=m2, other=0.0)  # (BJ, BD)
        u = tl.load(WU + rows[:, None] * d + d0 + offs_d[None, :], mask=m2, other=0.0)
        gate += tl.sum(g.to(tl.float32) * x[None, :], 1)
        up += tl.sum(u.to(tl.float32) * x[None, :], 1)
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def sparse_mlp_kernel(X, WG, WU, WD, IDX, Y, d, k, sxb, sib, syb,
                      BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(1)
    offs_j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = offs_j < k
    rows = tl.load(IDX + b * sib + offs_j, mask=jm, other=0).to(tl.int64)  # (BJ,) neuron ids
    h = _gate_up(X + b * sxb, WG, WU, rows, jm, d, BLOCK_J, BLOCK_D)  # (BJ,); 0 for padding rows
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, d, BLOCK_D):
        dm = (d0 + offs_d) < d
        wd = tl.load(WD + rows[:, None] * d + d0 + offs_d[None, :], mask=jm[:, None] & dm[None, :], other=0.0)
        part = tl.sum(wd.to(tl.float32) * h[:, None], 0)  # (BD,)
        tl.atomic_add(Y + b * syb + d0 + offs_d, part, mask=dm, sem="relaxed")


@triton.jit
def gate_up_entry(X, WG, WU, IDX, d, k, H, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """SparseMLPGateUp (TensorRT AOT entry: inputs, scalars, output). Contiguous x (B, d), neurons and
    h (B, k). Grid (cdiv(k, BLOCK_J), B)."""
    b = tl.program_id(1)
    offs_j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = offs_j < k
    rows = tl.load(IDX + b * k + offs_j, mask=jm, other=0).to(tl.int64)
    h = _gate_up(X + b.to(tl.int64) * d, WG, WU, rows, jm, d, BLOCK_J, BLOCK_D)
    tl.store(H + b * k + offs_j, h, mask=jm)


@triton.jit
def down_entry(H, WD, IDX, d, k, Y, BLOCK_J: tl.constexpr, BLOCK_O: tl.constexpr):
    """SparseMLPDown (TensorRT AOT entry): one program per BLOCK_O outputs of one sequence, over all its
    k neurons in order (BLOCK_J rows of w_down_t at a time, BLOCK_O contiguous values of each), so the sum
    needs no atomics and no zeroed buffer. Grid (cdiv(d, BLOCK_O), B)."""
    b = tl.program_id(1)
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    om = offs_o < d
    offs_j = tl.arange(0, BLOCK_J)
    acc = tl.zeros([BLOCK_O], tl.float32)
    for j0 in range(0, k, BLOCK_J):
        jm = (j0 + offs_j) < k
        rows = tl.load(IDX + b * k + j0 + offs_j, mask=jm, other=0).to(tl.int64)
        h = tl.load(H + b * k + j0 + offs_j, mask=jm, other=0.0)  # (BJ,)
        w = tl.load(WD + rows[:, None] * d + offs_o[None, :], mask=jm[:, None] & om[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * h[:, None], 0)
    tl.store(Y + b.to(tl.int64) * d + offs_o, acc.to(Y.dtype.element_ty), mask=om)


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


# (BLOCK_J, BLOCK_D, num_warps) of gate_up_entry: sparse_mlp's tile. (BLOCK_J, BLOCK_O, num_warps) of
# down_entry: 32 outputs (64 bytes of a bf16 row) per program keep 128 programs busy at d = 4096.
GATE_UP_CONFIG = (8, 1024, 4)
DOWN_CONFIG = (64, 32, 4)


def gate_up_block_d(d: int) -> int:
    return 16 if interpreting() else min(GATE_UP_CONFIG[1], next_pow2(d))


def gate_up(x, w_gate, w_up, neurons) -> torch.Tensor:
    B, d = x.shape
    k = neurons.shape[1]
    for t in (x, w_gate, w_up, neurons):
        assert t.is_contiguous()
    assert neurons.dtype == torch.int32 and w_gate.shape[1] == d
    h = torch.empty((B, k), dtype=torch.float32, device=x.device)
    block_j, _, warps = GATE_UP_CONFIG
    gate_up_entry[(triton.cdiv(k, block_j), B)](x, w_gate, w_up, neurons, d, k, h,
                                                BLOCK_J=block_j, BLOCK_D=gate_up_block_d(d), num_warps=warps)
    return h


def down(h, w_down_t, neurons) -> torch.Tensor:
    B, k = h.shape
    d = w_down_t.shape[1]
    for t in (h, w_down_t, neurons):
        assert t.is_contiguous()
    assert neurons.dtype == torch.int32 and h.dtype == torch.float32
    y = torch.empty((B, d), dtype=w_down_t.dtype, device=h.device)
    block_j, block_o, warps = DOWN_CONFIG
    block_j, block_o = (16, 16) if interpreting() else (block_j, block_o)
    down_entry[(triton.cdiv(d, block_o), B)](h, w_down_t, neurons, d, k, y, BLOCK_J=block_j, BLOCK_O=block_o,
                                             num_warps=warps)
    return y
