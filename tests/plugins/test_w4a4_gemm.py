"""w4a4_gemm: the reference quantizer against an independent numpy one (bit-exact), the
reference GEMM against dequantize-then-matmul (CPU); the Triton kernels against the
reference, bit-exact for the quantizer (GPU)."""

import numpy as np
import pytest
import torch

from planforge.plugins.w4a4_gemm import (
    MATMUL,
    outlier_permutation,
    pack,
    quantize_weights,
    quik_linear,
    quik_quantize,
    unpack,
)
from planforge.plugins.w4a4_gemm import reference as ref


def _numpy_quantize_row(row: np.ndarray, bits: int):
    """One token, float32 numpy, written from the QUIK formulas."""
    qmax, half = np.float32(2**bits - 1), 2 ** (bits - 1)
    lo, hi = row.min(), row.max()
    scale = np.float32((hi - lo) / qmax) if hi > lo else np.float32(1.0)
    codes = [int(np.clip(np.floor(np.float32((v - lo) / scale) + np.float32(0.5)), 0, qmax)) - half for v in row]
    return codes, scale, np.float32(lo + np.float32(half) * scale)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_quantizer_is_bit_exact_with_numpy(bits, dtype):
    g = torch.Generator().manual_seed(bits)
    M, K, Ko = 6, 48, 8
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    x[2] = 1.25  # constant row: scale falls back to 1
    perm = outlier_permutation(x.float().abs().amax(0), Ko)
    xq, sx, zx, xo = quik_quantize(x, perm, Ko, bits)
    codes = unpack(xq, bits)
    for m in range(M):
        row = x[m, perm[: K - Ko].long()].float().numpy()
        want_codes, want_scale, want_zero = _numpy_quantize_row(row, bits)
        assert codes[m].tolist() == want_codes
        assert sx[m].item() == float(want_scale) and zx[m].item() == float(want_zero)
    assert torch.equal(xo, x[:, perm[K - Ko :].long()])


def test_pack_layout_is_low_nibble_first():
    q = torch.tensor([[-8, 7, 1, -1]])
    assert pack(q, 4).view(torch.uint8).tolist() == [[0x78, 0xF1]]
    assert torch.equal(unpack(pack(q, 4), 4), q) and torch.equal(unpack(pack(q * 16, 8), 8), q * 16)


@pytest.mark.parametrize("bits", [4, 8])
def test_reference_matmul_equals_dequantize_then_matmul(bits):
    g = torch.Generator().manual_seed(3)
    M, K, N, Ko = 5, 64, 12, 16
    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
    w = (torch.randn(N, K, generator=g) * 0.05).to(torch.bfloat16)
    perm = outlier_permutation(x.float().abs().amax(0), Ko)
    W = quantize_weights(w, perm, Ko, bits)
    xq, sx, zx, xo = ref.quantize_activations(x, perm, Ko, bits)
    x_deq = unpack(xq, bits).double() * sx.double()[:, None] + zx.double()[:, None]  # (M, Kq)
    w_deq = unpack(W.packed, bits).double() * W.scale.double()[:, None]  # (N, Kq)
    want = x_deq @ w_deq.T + xo.double() @ W.outliers.double().T
    got = ref.quik_matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # and the quantized layer approximates the float one (RTN, random data)
    err = (quik_linear(x, W).float() - x.float() @ w.float().T).norm() / (x.float() @ w.float().T).norm()
    assert err < (0.2 if bits == 4 else 0.02)
    assert MATMUL.qualified_name == "planforge::QuikMatMul"


# ---------------------------------------------------------------- GPU: kernels vs reference


def _layer(M, K, N, Ko, bits, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2).to(dtype)
    x[:, :Ko] *= 20  # real outlier columns
    w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(dtype)
    perm = outlier_permutation(x.float().abs().amax(0), Ko)
    return x, quantize_weights(w, perm, Ko, bits)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,K,Ko", [(1, 4096, 256), (7, 256, 0), (300, 4096, 32), (16, 11008, 256), (33, 1000, 24)])
def test_quantize_kernel_is_bit_exact(bits, dtype, M, K, Ko):
    x, W = _layer(M, K, 8, Ko, bits, dtype, seed=M + K)
    x[0] = 0.75  # a constant row
    got = quik_quantize(x, W.perm, Ko, bits)
    want = ref.quantize_activations(x, W.perm, Ko, bits)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,compute", [(4, "int8"), (4, "fp8"), (8, "int8")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 16, 33, 300, 600])  # 300, 600 >= kernel.LARGE_M: unpacked codes, TMA GEMM
@pytest.mark.parametrize("N,K,Ko", [(4096, 4096, 256), (1000, 1100, 24), (64, 512, 0)])
def test_matmul_kernel_matches_reference(bits, compute, dtype, M, N, K, Ko):
    from planforge.plugins.w4a4_gemm import kernel

    x, W = _layer(M, K, N, Ko, bits, dtype, seed=M * N + K)
    xq, sx, zx, xo = ref.quantize_activations(x, W.perm, Ko, bits)
    got = kernel.matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, compute)
    want = ref.quik_matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, torch.float32)
    # integer part is exact; fp32 epilogue + outlier GEMM + one rounding to the output dtype
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(got.float(), want, rtol=2 * eps, atol=1e-3 * want.abs().max().item())


@pytest.mark.gpu
def test_linear_custom_op_matches_reference_on_llama_shape():
    x, W = _layer(64, 4096, 11008, 256, 4, torch.bfloat16, seed=5)
    got = quik_linear(x, W)
    want = ref.quik_linear(x, W)
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-3 * want.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,K,Ko", [(4096, 4096, 256), (1000, 1100, 24), (64, 512, 0), (300, 11008, 256)])
def test_one_token_linear_quantizes_inside_the_gemv(bits, dtype, N, K, Ko):
    """M = 1: kernel.linear quantizes inside the GEMV (one launch); same numbers as the two ops."""
    from planforge.plugins.w4a4_gemm import kernel

    x, W = _layer(1, K, N, Ko, bits, dtype, seed=N + K + bits)
    got = kernel.linear(x, W)
    xq, sx, zx, xo = ref.quantize_activations(x, W.perm, Ko, bits)
    want = ref.quik_matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, torch.float32)
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(got.float(), want, rtol=2 * eps, atol=1e-3 * want.abs().max().item())
    two_ops = kernel.matmul(*kernel.quantize(x, W.perm, Ko, bits), W.packed, W.scale, W.wsum, W.outliers, bits)
    torch.testing.assert_close(got.float(), two_ops.float(), rtol=2 * eps, atol=1e-3 * want.abs().max().item())


def _assert_matches_reference(got, xq, sx, zx, xo, W, bits, dtype):
    want = ref.quik_matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, torch.float32)
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(got.float(), want, rtol=2 * eps, atol=1e-3 * want.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("codes", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("K,Ko", [(4096, 256), (1100, 24), (520, 0)])
def test_codes_are_the_unpacked_reference_bit_for_bit(codes, K, Ko):
    """Large-M inputs: quantize(codes=) and kernel_large_m.unpack give one code per element,
    exactly ref.unpack of the packed bytes, in TMA-aligned rows."""
    from planforge.plugins.w4a4_gemm import kernel, kernel_large_m

    x, W = _layer(37, K, 300, Ko, 4, torch.bfloat16, seed=K)
    xq = ref.quantize_activations(x, W.perm, Ko, 4)[0]
    got_x = kernel.quantize(x, W.perm, Ko, 4, codes=codes)[0]
    got_w = kernel_large_m.unpack(W.packed, codes == torch.float8_e4m3fn)
    for got, packed in ((got_x, xq), (got_w, W.packed)):
        assert got.dtype == codes and kernel_large_m.tma_ready(got)
        assert torch.equal(got.float().to(torch.int32), unpack(packed, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("bits,fp8", [(4, False), (4, True), (8, False)])
@pytest.mark.parametrize("split", [1, 3, 8])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("M", [1, 5, 16])
def test_small_m_split_k_matches_reference(bits, fp8, split, swap, M):
    """M <= 16 with K split across programs (the last split of each tile writes the sum), with
    the tokens as the MMA's rows or (swap) its columns."""
    from planforge.plugins.w4a4_gemm import kernel

    x, W = _layer(M, 4096, 1000, 256, bits, torch.bfloat16, seed=split * 100 + M)
    xq, sx, zx, xo = ref.quantize_activations(x, W.perm, 256, bits)
    for _ in range(2):  # the counters start from zero on every call
        y = torch.empty((M, 1000), dtype=x.dtype, device="cuda")
        got = kernel._small_m(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, bits, fp8, y,
                              config=(64 if swap else 32, 128, 4, 3, split, swap))
        _assert_matches_reference(got, xq, sx, zx, xo, W, bits, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("compute", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_m_linear_quantizes_straight_to_codes(compute, dtype):
    """kernel.linear from LARGE_M tokens: activations quantized to codes, weights unpacked, TMA GEMM."""
    from planforge.plugins.w4a4_gemm import kernel

    x, W = _layer(kernel.LARGE_M + 77, 4096, 1100, 256, 4, dtype, seed=9)
    xq, sx, zx, xo = ref.quantize_activations(x, W.perm, 256, 4)
    _assert_matches_reference(kernel.linear(x, W, compute), xq, sx, zx, xo, W, 4, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("compute", ["int8", "fp8"])
@pytest.mark.parametrize("M", [1, 16, 33, 600])  # GEMV, split-K swapped tile, autotuned tile, TMA
def test_integer_sums_are_exact_at_their_largest(compute, M):
    """Every code at its largest magnitude (7 x 7 over 3840 columns): the sum, 188160, must come
    out exact on every path; Hopper's FP8 MMA loses it unless each MMA is promoted to float32."""
    from planforge.plugins.w4a4_gemm import kernel

    N, kq = 256, 3840
    dev = "cuda"
    x_q = torch.full((M, kq // 2), 0x77, dtype=torch.int8, device=dev)  # two codes of 7 per byte
    w_q = torch.full((N, kq // 2), 0x77, dtype=torch.int8, device=dev)
    ones, zeros = torch.ones(max(M, N), device=dev), torch.zeros(max(M, N), device=dev)
    x_out, w_out = torch.empty((M, 0), device=dev), torch.empty((N, 0), device=dev)  # float32 output
    y = kernel.matmul(x_q, ones[:M], zeros[:M], x_out, w_q, ones[:N], zeros[:N], w_out, 4, compute)
    assert y.dtype == torch.float32 and torch.equal(y, torch.full_like(y, 7 * 7 * kq))


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True])
def test_split_k_gives_the_same_bits_on_every_call(fp8):
    """The splits are added in a fixed order, whatever order they finish in."""
    from planforge.plugins.w4a4_gemm import kernel

    x, W = _layer(16, 4096, 4096, 256, 4, torch.float16, seed=3)
    xq, sx, zx, xo = ref.quantize_activations(x, W.perm, 256, 4)
    outs = [kernel._small_m(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4, fp8,
                            torch.empty((16, 4096), dtype=x.dtype, device="cuda"), config=(64, 128, 4, 4, 8, True))
            for _ in range(20)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
