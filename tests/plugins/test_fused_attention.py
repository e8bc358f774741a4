"""fused_attention: the reference against an independent per-query formulation (CPU), the
Triton kernels against the reference (GPU)."""

import math

import pytest
import torch

from planforge.plugins.fused_attention import (
    DECODE,
    PREFILL,
    attention_decode,
    attention_prefill,
    fused_attention_decode,
    fused_attention_prefill,
)

# Kernel vs float32 reference. Both accumulate in float32; the kernel rounds the
# softmax probabilities to the input dtype before P @ V, so errors are a few ulps.
TOL = {torch.float16: dict(atol=4e-3, rtol=1e-2), torch.bfloat16: dict(atol=2.5e-2, rtol=2e-2)}


def _per_query_attention(q, k, v, visible, scale):
    """float64, one query and one head at a time, keys chosen by a Python predicate."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    out = torch.zeros(B, Hq, Sq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kv = h * Hkv // Hq
            for i in range(Sq):
                keys = [j for j in range(Skv) if visible(b, i, j)]
                s = torch.stack([q[b, h, i].double() @ k[b, kv, j].double() * scale for j in keys])
                w = torch.exp(s - s.max())
                out[b, h, i] = sum(w[n] * v[b, kv, j].double() for n, j in enumerate(keys)) / w.sum()
    return out


@pytest.mark.parametrize(
    "B,Hq,Hkv,Sq,Skv,window,sinks",
    [(2, 4, 4, 7, 7, 0, 0), (1, 4, 2, 5, 9, 0, 0), (1, 3, 1, 12, 12, 4, 0), (2, 2, 1, 13, 13, 5, 3)],
)
def test_prefill_reference_matches_per_query_attention(B, Hq, Hkv, Sq, Skv, window, sinks):
    g = torch.Generator().manual_seed(0)
    D = 8
    q, k, v = (torch.randn(B, h, s, D, generator=g) for h, s in ((Hq, Sq), (Hkv, Skv), (Hkv, Skv)))
    offset = Skv - Sq

    def visible(b, i, j):
        p = i + offset
        return j <= p and (window == 0 or p - j < window or j < sinks)

    want = _per_query_attention(q, k, v, visible, 1 / math.sqrt(D))
    got = attention_prefill(q, k, v, window=window, sinks=sinks)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_decode_reference_matches_per_query_attention():
    g = torch.Generator().manual_seed(1)
    B, Hq, Hkv, Smax, D = 3, 6, 2, 11, 8
    q = torch.randn(B, Hq, 1, D, generator=g)
    k, v = torch.randn(2, B, Hkv, Smax, D, generator=g)
    lens = torch.tensor([1, 11, 6], dtype=torch.int32)
    want = _per_query_attention(q, k, v, lambda b, i, j: j < lens[b], 0.3)
    got = attention_decode(q[:, :, 0], k, v, lens, scale=0.3)
    torch.testing.assert_close(got.double(), want[:, :, 0], atol=1e-5, rtol=1e-5)


def test_cpu_custom_ops_run_the_reference_and_have_fake_shapes():
    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    torch.testing.assert_close(fused_attention_prefill(q, k, v), attention_prefill(q, k, v))
    lens = torch.tensor([3], dtype=torch.int32)
    torch.testing.assert_close(fused_attention_decode(q[:, :, 0], k, v, lens), attention_decode(q[:, :, 0], k, v, lens))
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fq, fk = torch.empty(2, 8, 33, 64), torch.empty(2, 2, 33, 64)
        assert fused_attention_prefill(fq, fk, fk).shape == (2, 8, 33, 64)
    assert PREFILL.qualified_name == "planforge::FusedAttentionPrefill" and DECODE.version == 2


# ---------------------------------------------------------------- GPU: kernel vs reference


def _rand(shape, dtype, gen):
    return torch.randn(shape, device="cuda", generator=gen, dtype=torch.float32).to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Hq,Hkv", [(8, 8), (8, 2), (8, 1)])
@pytest.mark.parametrize("Sq,Skv", [(1, 1), (17, 17), (128, 128), (300, 300), (1031, 1031), (100, 357)])
def test_prefill_kernel_matches_reference(dtype, D, Hq, Hkv, Sq, Skv):
    gen = torch.Generator(device="cuda").manual_seed(Sq * 31 + Skv)
    B = 2
    q = _rand((B, Hq, Sq, D), dtype, gen)
    k, v = _rand((B, Hkv, Skv, D), dtype, gen), _rand((B, Hkv, Skv, D), dtype, gen)
    got = fused_attention_prefill(q, k, v)
    torch.testing.assert_close(got.float(), attention_prefill(q, k, v).float(), **TOL[dtype])


@pytest.mark.gpu
def test_prefill_kernel_reads_any_layout_tma_cannot():
    """An offset view (unaligned base), odd strides of size-1 dimensions, a (B, S, H, D) permute,
    and an empty batch: the same answers as the reference (TMA gets an aligned copy where needed)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    flat = _rand((1 + 2 * 33 * 64,), torch.bfloat16, gen)
    q = flat[1:].view(1, 2, 33, 64)  # base 2 bytes past an allocation
    k = _rand((1, 2, 33, 64), torch.bfloat16, gen).as_strided((1, 2, 33, 64), (7, 33 * 64, 64, 1))
    v = _rand((1, 33, 2, 64), torch.bfloat16, gen).permute(0, 2, 1, 3)
    got = fused_attention_prefill(q, k, v)
    torch.testing.assert_close(got.float(), attention_prefill(q, k, v).float(), **TOL[torch.bfloat16])
    empty = torch.empty((0, 2, 33, 64), device="cuda", dtype=torch.bfloat16)
    assert fused_attention_prefill(empty, empty, empty).shape == empty.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("S,window,sinks", [(300, 64, 4), (1100, 256, 4), (777, 100, 0), (500, 1024, 4), (260, 33, 70)])
def test_prefill_kernel_window_and_sinks_match_reference(dtype, D, S, window, sinks):
    gen = torch.Generator(device="cuda").manual_seed(S + window)
    q, k, v = (_rand((1, 4, S, D), dtype, gen) if i == 0 else _rand((1, 2, S, D), dtype, gen) for i in range(3))
    got = fused_attention_prefill(q, k, v, 0.0, window, sinks)
    torch.testing.assert_close(got.float(), attention_prefill(q, k, v, 0.0, window, sinks).float(), **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,Hq,Hkv", [(1, 32, 8), (5, 8, 8), (3, 16, 1)])
@pytest.mark.parametrize("Smax", [1, 63, 1000, 4099])
def test_decode_kernel_matches_reference_on_ragged_lengths(dtype, D, B, Hq, Hkv, Smax):
    gen = torch.Generator(device="cuda").manual_seed(Smax * 7 + B)
    q = _rand((B, Hq, D), dtype, gen)
    k, v = _rand((B, Hkv, Smax, D), dtype, gen), _rand((B, Hkv, Smax, D), dtype, gen)
    lens = torch.randint(1, Smax + 1, (B,), device="cuda", generator=gen, dtype=torch.int32)
    lens[0] = Smax
    got = fused_attention_decode(q, k, v, lens)
    torch.testing.assert_close(got.float(), attention_decode(q, k, v, lens).float(), **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("Smax", [63, 1000, 4099])
def test_decode_kernel_ignores_cache_slots_past_the_length(tma, Smax):
    """Slots past a sequence's length hold NaN here (a cache is not cleared): the answer must not see them."""
    from planforge.plugins.fused_attention import kernel

    gen = torch.Generator(device="cuda").manual_seed(Smax)
    q = _rand((3, 16, 128), torch.bfloat16, gen)
    k, v = _rand((3, 4, Smax, 128), torch.bfloat16, gen), _rand((3, 4, Smax, 128), torch.bfloat16, gen)
    lens = torch.tensor([Smax, 1, Smax // 2 + 1], device="cuda", dtype=torch.int32)
    want = attention_decode(q, k, v, lens).float()
    for b, n in enumerate(lens.tolist()):
        k[b, :, n:], v[b, :, n:] = float("nan"), float("nan")
    got = kernel.decode(q, k, v, lens, config=(64, 4, 3, tma))
    torch.testing.assert_close(got.float(), want, **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("tma", [False, True])
def test_decode_kernel_on_selected_kv_groups(tma):
    """groups (sparse_heads' path): only the listed KV heads, through pointers or TMA."""
    from planforge.plugins.fused_attention import kernel

    gen = torch.Generator(device="cuda").manual_seed(11)
    B, Hkv, G, Smax, D = 2, 8, 4, 700, 128
    k, v = _rand((B, Hkv, Smax, D), torch.bfloat16, gen), _rand((B, Hkv, Smax, D), torch.bfloat16, gen)
    groups = torch.tensor([[1, 6, 7], [0, 2, 5]], device="cuda", dtype=torch.int32)  # (B, 3) KV heads
    q = _rand((B, 3 * G, D), torch.bfloat16, gen)  # their query heads only
    lens = torch.tensor([700, 123], device="cuda", dtype=torch.int32)
    got = kernel.decode(q, k, v, lens, groups=groups, config=(64, 4, 3, tma))
    idx = groups.long()[:, :, None, None].expand(B, 3, Smax, D)
    want = attention_decode(q, torch.gather(k, 1, idx), torch.gather(v, 1, idx), lens)
    torch.testing.assert_close(got.float(), want.float(), **TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [1, 3, 64])
def test_decode_kernel_any_split_count_gives_the_same_answer(num_splits):
    from planforge.plugins.fused_attention import kernel

    gen = torch.Generator(device="cuda").manual_seed(num_splits)
    q = _rand((2, 8, 128), torch.bfloat16, gen)
    k, v = _rand((2, 2, 2000, 128), torch.bfloat16, gen), _rand((2, 2, 2000, 128), torch.bfloat16, gen)
    lens = torch.tensor([1999, 5], device="cuda", dtype=torch.int32)
    got = kernel.decode(q, k, v, lens, num_splits=num_splits)
    torch.testing.assert_close(got.float(), attention_decode(q, k, v, lens).float(), **TOL[torch.bfloat16])
