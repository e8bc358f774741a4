"""sparse_heads: the reference against a dense decode step with unselected heads zeroed (CPU);
the Triton kernels against the reference (GPU)."""

import pytest
import torch

from planforge.plugins.kv_cache_update import rotary_cos_sin
from planforge.plugins.sparse_heads import SPARSE_HEADS, sparse_heads_decode
from planforge.plugins.sparse_heads import reference as ref


def _dense_decode_step(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, pos, head_keep):
    """float64 Llama decode step for every head (rotate_half rotary, full softmax), heads masked at the end."""
    B, d = x.shape
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    Hq = w_q.shape[0] // D
    xd = x.double()
    full_cos, full_sin = torch.cat([cos, cos], -1).double(), torch.cat([sin, sin], -1).double()  # (B, D)

    def rope(t):  # (B, H, D)
        rot = torch.cat([-t[..., D // 2 :], t[..., : D // 2]], -1)
        return t * full_cos[:, None] + rot * full_sin[:, None]

    q = rope((xd @ w_q.double().T).view(B, Hq, D))
    k = rope((xd @ w_k.double().T).view(B, Hkv, D))
    v = (xd @ w_v.double().T).view(B, Hkv, D)
    out = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        p = int(pos[b])
        keys = torch.cat([k_cache[b, :, :p].double(), k[b][:, None]], 1)  # (Hkv, p+1, D)
        vals = torch.cat([v_cache[b, :, :p].double(), v[b][:, None]], 1)
        for hq in range(Hq):
            kv = hq // (Hq // Hkv)
            w = torch.softmax(keys[kv] @ q[b, hq] / D**0.5, 0)
            out[b, hq] = w @ vals[kv]
    out = out * head_keep[:, :, None]
    return out.reshape(B, Hq * D) @ w_o.double().T  # (B, d)


@pytest.mark.parametrize("Hq,Hkv,groups", [(4, 4, [[0, 2], [3, 1]]), (4, 2, [[1], [0]]), (4, 2, [[0, 1], [1, 0]])])
def test_reference_matches_dense_step_with_unselected_heads_zeroed(Hq, Hkv, groups):
    g = torch.Generator().manual_seed(Hq * 10 + Hkv)
    B, d, D, C = 2, 24, 8, 12
    x = torch.randn(B, d, generator=g)
    w_q, w_o = torch.randn(Hq * D, d, generator=g) * 0.3, torch.randn(d, Hq * D, generator=g) * 0.3
    w_k, w_v = torch.randn(2, Hkv * D, d, generator=g) * 0.3
    k_cache, v_cache = torch.randn(2, B, Hkv, C, D, generator=g)
    pos = torch.tensor([3, 9], dtype=torch.int32)
    cos, sin = (t[:, 0] for t in rotary_cos_sin(pos, 1, D))
    sel = torch.tensor(groups, dtype=torch.int32)
    keep = torch.zeros(B, Hq, dtype=torch.float64)
    for b in range(B):
        for grp in groups[b]:
            keep[b, grp * (Hq // Hkv) : (grp + 1) * (Hq // Hkv)] = 1
    want = _dense_decode_step(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, pos, keep)
    kc, vc = k_cache.clone(), v_cache.clone()
    got = sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, kc, vc, pos, sel)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    for b in range(B):  # only the selected groups' slot was written
        untouched = [hk for hk in range(Hkv) if hk not in groups[b]]
        assert torch.equal(kc[b, untouched], k_cache[b, untouched])
        assert not torch.equal(kc[b, groups[b], int(pos[b])], k_cache[b, groups[b], int(pos[b])])
    assert SPARSE_HEADS.qualified_name == "planforge::SparseHeadsAttention"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,d,Hq,Hkv,D,h", [(1, 4096, 32, 32, 128, 16), (3, 512, 8, 2, 64, 1), (2, 1024, 16, 4, 128, 3)])
def test_kernel_matches_reference(dtype, B, d, Hq, Hkv, D, h):
    gen = torch.Generator(device="cuda").manual_seed(d + h)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * s).to(dtype)

    x = rnd(B, d)
    w_q, w_k, w_v = rnd(Hq * D, d, s=d**-0.5), rnd(Hkv * D, d, s=d**-0.5), rnd(Hkv * D, d, s=d**-0.5)
    w_o = rnd(d, Hq * D, s=(Hq * D) ** -0.5)
    C = 777
    k_cache, v_cache = rnd(B, Hkv, C, D), rnd(B, Hkv, C, D)
    pos = torch.randint(0, C, (B,), device="cuda", generator=gen, dtype=torch.int32)
    cos, sin = (t[:, 0] for t in rotary_cos_sin(pos, 1, D))
    groups = torch.stack([torch.randperm(Hkv, device="cuda", generator=gen)[:h] for _ in range(B)]).to(torch.int32)
    got_c, want_c = (k_cache.clone(), v_cache.clone()), (k_cache.clone(), v_cache.clone())
    got = sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, *got_c, pos, groups)
    want = ref.sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, *want_c, pos, groups)
    # float32 accumulations in a different order; q/k/v/attention rounded to dtype at the same points
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=4e-3, rtol=1e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    torch.testing.assert_close(got_c[0].float(), want_c[0].float(), **tol)
    torch.testing.assert_close(got_c[1].float(), want_c[1].float(), **tol)
