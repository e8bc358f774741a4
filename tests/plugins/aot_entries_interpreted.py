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


if __name__ == "__main__":
    for window, sinks in ((0, 0), (9, 3)):
        attention(window, sinks)
    for rolling, rotary in ((0, True), (1, False), (1, True)):
        kv_cache_update(rolling, rotary)
    for bits, n_outliers in ((4, 8), (8, 16)):
        quik(bits, n_outliers)
    print("AOT entries match the references")
