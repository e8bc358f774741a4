"""Runs each AOT entry kernel on Triton's CPU interpreter with the grid and scalars its TensorRT
plugin would hand TensorRT, and checks the result against the op's torch reference.

Run by test_tensorrt_plugins.py in a subprocess with TRITON_INTERPRET=1 (Triton reads it when a
kernel module is imported). Exits non-zero with the first mismatch.
"""

from __future__ import annotations

import torch

import tensorrt_double

tensorrt_double.install()

from planforge.plugins.fused_attention import kernel as attn_kernel, reference as attn_ref  # noqa: E402
from planforge.plugins.fused_attention import tensorrt as attn_plugin  # noqa: E402
from planforge.plugins.kv_cache_update import kernel as kv_kernel, reference as kv_ref  # noqa: E402
from planforge.plugins.kv_cache_update import tensorrt as kv_plugin  # noqa: E402
from planforge.plugins.sparse_heads import kernel as heads_kernel, reference as heads_ref  # noqa: E402
from planforge.plugins.sparse_heads import tensorrt as heads_plugin  # noqa: E402
from planforge.plugins.sparse_mlp import kernel as mlp_kernel, reference as mlp_ref  # noqa: E402
from planforge.plugins.sparse_mlp import tensorrt as mlp_plugin  # noqa: E402
from planforge.plugins.w4a4_gemm import kernel as quik_kernel, reference as quik_ref  # noqa: E402
from planforge.plugins.w4a4_gemm import tensorrt as quik_plugin  # noqa: E402


def kv_cache_update(rolling: int, rotary: bool) -> None:
    g = torch.Generator().manual_seed(rolling * 2 + rotary)
    B, H, C, D, S, sinks, block_s = 2, 2, 14, 16, 5, 2, 16
    caches = [torch.randn(B, H, C, D, generator=g).half() for _ in range(2)]
    new = [torch.randn(B, H, S, D, generator=g).half() for _ in range(2)]
    positions = torch.tensor([0, 20 if rolling else 9], dtype=torch.int32)  # rolling: the ring wraps
    cos, sin = (torch.randn(B, S, D // 2, generator=g) for _ in range(2))
    want = [c.clone() for c in caches]
    kv_ref.kv_cache_update(*want, *new, positions, cos if rotary else None, sin if rotary else None,
                           bool(rolling), sinks)
    table = cos if rotary else torch.zeros(1)
    grid = kv_plugin.launch_grid(B, H, S, block_s)
    scalars = kv_plugin.scalar_values(caches[0].shape, new[0].shape, table.shape, sinks, rotary)
    kv_kernel.kv_update_entry[grid](*caches, *new, positions, table, sin if rotary else table, *scalars, *caches,
                                    HALF_D=D // 2, BLOCK_S=block_s, ROLLING=bool(rolling), ROTARY=rotary)
    for got, expected in zip(caches, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def quik(bits: int, n_outliers: int) -> None:
    g = torch.Generator().manual_seed(bits)
    M, K, N = 5, 64, 32
    x = torch.randn(M, K, generator=g).half()
    perm = torch.randperm(K, generator=g).to(torch.int32)
    kqb = (K - n_outliers) * bits // 8
    outs = [torch.empty(M, kqb, dtype=torch.int8), torch.empty(M), torch.empty(M), torch.empty(M, n_outliers).half()]
    quik_kernel.quantize_entry[(M,)](x, perm, *quik_plugin.quantize_scalar_values(K, n_outliers, bits), *outs,
                                     BITS=bits, BLOCK_B=quik_kernel.quantize_block_b(kqb, bits),
                                     BLOCK_O=quik_kernel.quantize_block_o(n_outliers))
    for got, expected in zip(outs, quik_ref.quantize_activations(x, perm, n_outliers, bits)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # bit-exact, as the Python kernel

    w = quik_ref.quantize_weights(torch.randn(N, K, generator=g), perm, n_outliers, bits)
    want = quik_ref.quik_matmul(*outs, w.packed, w.scale, w.wsum, w.outliers.half(), bits, torch.float32)
    for tactic, (bm, bn, bk, group_m, swap, _, _) in quik_plugin.GEMM_TACTICS.items():
        y = torch.full((M, N), float("nan")).half()
        quik_kernel.quik_matmul_entry[quik_plugin.matmul_grid(M, N, bm, bn)](
            *outs, w.packed, w.scale, w.wsum, w.outliers.half(), *quik_plugin.matmul_scalar_values(M, N, kqb, n_outliers),
            y, BITS=bits, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, SWAP_AB=swap)
        torch.testing.assert_close(y.float(), want, rtol=2 * 2.0**-11, atol=1e-3 * want.abs().max().item(),
                                   msg=lambda m: f"QuikMatMul tactic {tactic}: {m}")


def attention(window: int, sinks: int) -> None:
    g = torch.Generator().manual_seed(window)
    B, Hq, Hkv, D, Sq, Skv, C = 2, 4, 2, 16, 37, 45, 50
    q = torch.randn(B, Hq, Sq, D, generator=g).half()
    k, v = (torch.randn(B, Hkv, Skv, D, generator=g).half() for _ in range(2))
    want = attn_ref.attention_prefill(q, k, v, 0.0, window, sinks).float()
    for tactic, (bm, bn, _, _) in attn_plugin.PREFILL_TACTICS.items():
        out = torch.full_like(q, float("nan"))
        bm, bn = min(bm, 16), min(bn, 16)  # the interpreter's tile (the kernel's CPU limit), same loops
        attn_kernel.prefill_entry[attn_plugin.prefill_grid(B, Hq, Sq, bm)](
            q, k, v, *attn_plugin.prefill_scalar_values(q.shape, k.shape, window, sinks), out,
            QK_SCALE=attn_kernel._qk_scale(0.0, D), HEAD_D=D, WINDOWED=window > 0, BLOCK_M=bm, BLOCK_N=bn)
        torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-3, msg=lambda m: f"prefill {tactic}: {m}")

    qd = torch.randn(B, Hq, D, generator=g).half()
    kc, vc = (torch.randn(B, Hkv, C, D, generator=g).half() for _ in range(2))
    lengths = torch.tensor([7, 50], dtype=torch.int32)
    want = attn_ref.attention_decode(qd, kc, vc, lengths, 0.3).float()
    out = torch.full_like(qd, float("nan"))
    attn_kernel.decode_entry[attn_plugin.decode_grid(B, Hkv)](
        qd, kc, vc, lengths, *attn_plugin.decode_scalar_values(qd.shape, kc.shape), out,
        QK_SCALE=attn_kernel._qk_scale(0.3, D), G=Hq // Hkv, G_PAD=16, HEAD_D=D, BLOCK_N=16)
    torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-3)


def sparse_mlp() -> None:
    g = torch.Generator().manual_seed(5)
    B, d, F, k = 2, 40, 50, 13  # k and d not multiples of the tiles: the masks are exercised
    x = torch.randn(B, d, generator=g).half()
    w_gate, w_up, w_down_t = ((torch.randn(F, d, generator=g) * 0.3).half() for _ in range(3))
    neurons = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)]).to(torch.int32)
    h = torch.full((B, k), float("nan"))
    mlp_kernel.gate_up_entry[mlp_plugin.gate_up_grid(B, k)](x, w_gate, w_up, neurons, d, k, h,
                                                            BLOCK_J=mlp_kernel.GATE_UP_CONFIG[0], BLOCK_D=16)
    want_h = mlp_ref.gate_up(x, w_gate, w_up, neurons)
    torch.testing.assert_close(h, want_h, rtol=1e-5, atol=1e-5)
    y = torch.full((B, d), float("nan")).half()
    mlp_kernel.down_entry[mlp_plugin.down_grid(B, d, 16)](want_h, w_down_t, neurons, d, k, y, BLOCK_J=8, BLOCK_O=16)
    torch.testing.assert_close(y.float(), mlp_ref.down(want_h, w_down_t, neurons).float(), rtol=2e-3, atol=2e-3)


def sparse_heads(bias: bool, rotary: bool) -> None:
    g = torch.Generator().manual_seed(bias * 2 + rotary)
    B, Hq, Hkv, D, h, d, C = 2, 4, 2, 16, 3, 64, 20
    x = torch.randn(B, d, generator=g).half()
    w_q, w_o = ((torch.randn(Hq * D, d, generator=g) * 0.2).half() for _ in range(2))
    b_q = torch.randn(Hq * D, generator=g).half()
    cos, sin = (torch.randn(B, D // 2, generator=g) for _ in range(2))
    heads = torch.tensor([[3, 0, 1], [2, 1, 3]], dtype=torch.int32)
    kc, vc = (torch.randn(B, Hkv, C, D, generator=g).half() for _ in range(2))
    lengths = torch.tensor([5, 20], dtype=torch.int32)
    placeholder = torch.zeros(1)
    q = torch.full((B, h, D), float("nan")).half()
    heads_kernel.q_kernel[heads_plugin.q_grid(B, h, D)](
        x, w_q, heads, b_q if bias else placeholder.half(), cos if rotary else placeholder,
        sin if rotary else placeholder, d, h, q, HAS_BIAS=bias, ROTARY=rotary, HALF=D // 2, RH=heads_kernel.RH,
        BLOCK_D=32)
    want_q = heads_ref.q_proj(x, w_q, heads, b_q if bias else None, cos if rotary else None,
                              sin if rotary else None, D)
    torch.testing.assert_close(q.float(), want_q.float(), rtol=0, atol=2e-3)
    attn = torch.full_like(q, float("nan"))
    heads_kernel.attend_entry[heads_plugin.attend_grid(B, h)](
        want_q, kc, vc, lengths, heads, *heads_plugin.attend_scalar_values(q.shape, kc.shape), attn,
        QK_SCALE=attn_kernel._qk_scale(0.0, D), GROUP=Hq // Hkv, HEAD_D=D, BLOCK_N=16)
    want_attn = heads_ref.attend(want_q, kc, vc, lengths, heads, 0.0, Hq // Hkv)
    torch.testing.assert_close(attn.float(), want_attn.float(), rtol=0, atol=2e-3)
    y = torch.full((B, d), float("nan")).half()
    heads_kernel.oproj_entry[heads_plugin.o_grid(B, d, 16)](want_attn, w_o, heads, d, h, y, D=D, BLOCK_O=16)
    torch.testing.assert_close(y.float(), heads_ref.o_proj(want_attn, w_o, heads).float(), rtol=2e-3, atol=2e-3)


if __name__ == "__main__":
    sparse_mlp()
    for bias, rotary in ((False, True), (True, False)):
        sparse_heads(bias, rotary)
    for window, sinks in ((0, 0), (9, 3)):
        attention(window, sinks)
    for rolling, rotary in ((0, True), (1, False), (1, True)):
        kv_cache_update(rolling, rotary)
    for bits, n_outliers in ((4, 8), (8, 16)):
        quik(bits, n_outliers)
    print("AOT entries match the references")
