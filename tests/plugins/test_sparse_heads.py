"""sparse_heads: the reference against a dense decode step with unselected query heads zeroed (CPU);
the Triton kernels against the reference (GPU)."""

import pytest
import torch

from planforge.plugins.kv_cache_update import rotary_cos_sin
from planforge.plugins.sparse_heads import SPARSE_HEADS, sparse_heads_decode
from planforge.plugins.sparse_heads import reference as ref


def _dense_decode_step(x, w_q, b_q, w_o, cos, sin, k_cache, v_cache, lens, head_keep):
    """float64 decode step for every query head (rotate_half rotary or none, full softmax), heads masked."""
    B, d = x.shape
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    Hq = w_q.shape[0] // D
    q = (x.double() @ w_q.double().T + (0 if b_q is None else b_q.double())).view(B, Hq, D)
    if cos is not None:
        full_cos, full_sin = torch.cat([cos, cos], -1).double(), torch.cat([sin, sin], -1).double()  # (B, D)
        rot = torch.cat([-q[..., D // 2:], q[..., :D // 2]], -1)
        q = q * full_cos[:, None] + rot * full_sin[:, None]
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        n = int(lens[b])
        for hq in range(Hq):
            kv = hq // (Hq // Hkv)
            w = torch.softmax(k_cache[b, kv, :n].double() @ q[b, hq] / D**0.5, 0)
            out[b, hq] = w @ v_cache[b, kv, :n].double()
    out = out * head_keep[:, :, None]
    return out.reshape(B, Hq * D) @ w_o.double()  # (B, d)


@pytest.mark.parametrize("Hq,Hkv,heads,bias,rotary", [
    (4, 4, [[0, 2], [3, 1]], False, True),
    (4, 2, [[1], [2]], True, True),  # GQA: query heads 1 and 2 read KV heads 0 and 1
    (4, 2, [[0, 3, 1], [1, 0, 2]], True, False),  # no rotary (GPT-2's absolute positions)
])
def test_reference_matches_dense_step_with_unselected_heads_zeroed(Hq, Hkv, heads, bias, rotary):
    g = torch.Generator().manual_seed(Hq * 10 + Hkv)
    B, d, D, C = 2, 24, 8, 12
    x = torch.randn(B, d, generator=g)
    w_q, w_o = torch.randn(2, Hq * D, d, generator=g) * 0.3
    b_q = torch.randn(Hq * D, generator=g) if bias else None
    k_cache, v_cache = torch.randn(2, B, Hkv, C, D, generator=g)
    lens = torch.tensor([4, 10], dtype=torch.int32)
    cos, sin = (t[:, 0] for t in rotary_cos_sin(lens - 1, 1, D)) if rotary else (None, None)
    keep = torch.zeros(B, Hq, dtype=torch.float64)
    for b in range(B):
        keep[b, heads[b]] = 1
    want = _dense_decode_step(x, w_q, b_q, w_o, cos, sin, k_cache, v_cache, lens, keep)
    kc, vc = k_cache.clone(), v_cache.clone()
    got = sparse_heads_decode(x, w_q, w_o, kc, vc, lens, torch.tensor(heads, dtype=torch.int32), b_q, cos, sin)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(kc, k_cache) and torch.equal(vc, v_cache)  # the op only reads the cache
    assert SPARSE_HEADS.qualified_name == "planforge::SparseHeadsAttention"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,d,Hq,Hkv,D,h,bias", [(1, 4096, 32, 32, 128, 16, False), (3, 512, 8, 2, 64, 1, True),
                                                 (2, 1024, 16, 4, 128, 7, False)])
def test_kernel_matches_reference(dtype, B, d, Hq, Hkv, D, h, bias):
    gen = torch.Generator(device="cuda").manual_seed(d + h)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * s).to(dtype)

    x = rnd(B, d)
    w_q, w_o = rnd(Hq * D, d, s=d**-0.5), rnd(Hq * D, d, s=(Hq * D) ** -0.5)
    b_q = rnd(Hq * D, s=0.1) if bias else None
    C = 777
    k_cache, v_cache = rnd(B, Hkv, C, D), rnd(B, Hkv, C, D)
    lens = torch.randint(1, C + 1, (B,), device="cuda", generator=gen, dtype=torch.int32)
    cos, sin = (t[:, 0] for t in rotary_cos_sin(lens - 1, 1, D))
    heads = torch.stack([torch.randperm(Hq, device="cuda", generator=gen)[:h] for _ in range(B)]).to(torch.int32)
    got = sparse_heads_decode(x, w_q, w_o, k_cache, v_cache, lens, heads, b_q, cos, sin)
    want = ref.sparse_heads_decode(x, w_q, w_o, k_cache, v_cache, lens, heads, b_q, cos, sin)
    # float32 accumulations in a different order; q and the attention rounded to dtype at the same points
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=4e-3, rtol=1e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    # the three steps TensorRT's graph runs as separate ops (SparseHeadsQProj, SparseHeadsAttend, SparseHeadsOProj)
    ops = torch.ops.planforge
    q = ops.sparse_heads_q_proj(x, w_q, heads, b_q, cos, sin, D)
    steps = ops.sparse_heads_o_proj(ops.sparse_heads_attend(q, k_cache, v_cache, lens, heads, 0.0, Hq // Hkv), w_o,
                                    heads)
    torch.testing.assert_close(steps.float(), want.float(), **tol)
