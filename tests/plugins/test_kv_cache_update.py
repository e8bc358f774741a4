"""kv_cache_update: the reference against a token-by-token streaming model and the
rotate-half rotary formula (CPU); the Triton kernel against the reference (GPU)."""

import pytest
import torch

from planforge.plugins.kv_cache_update import KV_CACHE_UPDATE, cache_slots, kv_cache_update, reference, rotary_cos_sin


def _position_coded(B, H, S, D, start):
    """New rows whose every element holds the token's absolute position (+ 1000 * batch)."""
    pos = start[:, None] + torch.arange(S)  # (B, S)
    code = pos.float() + 1000 * torch.arange(B)[:, None]
    return code[:, None, :, None].expand(B, H, S, D).contiguous()  # (B, H, S, D)


def test_linear_mode_writes_rows_at_their_positions():
    B, H, C, S, D = 2, 3, 16, 5, 4
    kc, vc = torch.zeros(2, B, H, C, D)
    start = torch.tensor([0, 9], dtype=torch.int32)
    new = torch.randn(B, H, S, D)
    kv_cache_update(kc, vc, new, -new, start)
    for b in range(B):
        p = int(start[b])
        torch.testing.assert_close(kc[b, :, p : p + S], new[b], rtol=0, atol=0)
        torch.testing.assert_close(vc[b, :, p : p + S], -new[b], rtol=0, atol=0)
        assert kc[b, :, :p].abs().sum() == 0 and kc[b, :, p + S :].abs().sum() == 0


@pytest.mark.parametrize("chunks", [[1] * 30, [7, 1, 1, 12, 1, 1], [25, 1, 1], [3, 3, 3, 3, 3, 3]])
def test_rolling_mode_keeps_sinks_and_the_latest_window(chunks):
    B, H, C, D, sinks = 2, 2, 10, 4, 3
    kc, vc = torch.full((2, B, H, C, D), -1.0)
    seen = torch.zeros(B, dtype=torch.int32)
    for n in chunks:
        new = _position_coded(B, H, n, D, seen)
        kv_cache_update(kc, vc, new, new, seen, rolling=True, sinks=sinks)
        seen += n
        total = int(seen[0])
        expected = list(range(min(sinks, total))) + list(range(max(sinks, total - (C - sinks)), total))
        for b in range(B):
            held = sorted(int(x) - 1000 * b for x in kc[b, 0, :, 0] if x >= 0)
            assert held == expected, (b, total, held)
            assert [int(x) - 1000 * b for x in kc[b, 0, : min(sinks, total), 0]] == list(range(min(sinks, total)))


def test_rotary_matches_rotate_half_formula():
    B, H, S, D = 2, 3, 6, 16
    k = torch.randn(B, H, S, D)
    start = torch.tensor([0, 40], dtype=torch.int32)
    cos, sin = rotary_cos_sin(start, S, D)
    kc, vc = torch.zeros(2, B, H, 64, D)
    kv_cache_update(kc, vc, k, k, start, cos, sin)
    full_cos, full_sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]  # (B, 1, S, D)
    rotate_half = torch.cat([-k[..., D // 2 :], k[..., : D // 2]], -1)
    want = k * full_cos + rotate_half * full_sin
    for b in range(B):
        p = int(start[b])
        torch.testing.assert_close(kc[b, :, p : p + S], want[b], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(vc[b, :, p : p + S], k[b], atol=0, rtol=0)


def test_schema_and_fake_shape():
    assert KV_CACHE_UPDATE.qualified_name == "planforge::KVCacheUpdate" and KV_CACHE_UPDATE.mutates == ("k_cache", "v_cache")
    slots, keep = cache_slots(torch.tensor([5], dtype=torch.int32), 4, 6, rolling=True, sinks=2)
    assert slots.tolist() == [[5, 2, 3, 4]] and keep.all()


# ---------------------------------------------------------------- GPU: kernel vs reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("S", [1, 37, 300])
@pytest.mark.parametrize("rolling,sinks", [(False, 0), (True, 4), (True, 0)])
@pytest.mark.parametrize("rotary", [False, True])
def test_kernel_matches_reference(dtype, D, S, rolling, sinks, rotary):
    gen = torch.Generator(device="cuda").manual_seed(S * 13 + D)
    B, H, C = 3, 4, 512 if not rolling else 260
    kc = torch.randn(B, H, C, D, device="cuda", generator=gen).to(dtype)
    vc = torch.randn(B, H, C, D, device="cuda", generator=gen).to(dtype)
    kn = torch.randn(B, H, S, D, device="cuda", generator=gen).to(dtype)
    vn = torch.randn(B, H, S, D, device="cuda", generator=gen).to(dtype)
    high = C - S if not rolling else 5000
    pos = torch.randint(0, high + 1, (B,), device="cuda", generator=gen, dtype=torch.int32)
    cos, sin = rotary_cos_sin(pos, S, D) if rotary else (None, None)
    got, want = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    kv_cache_update(*got, kn, vn, pos, cos, sin, rolling, sinks)
    reference.kv_cache_update(*want, kn, vn, pos, cos, sin, rolling, sinks)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)  # V is a pure copy: bit-exact
    tol = dict(atol=0, rtol=0) if not rotary else dict(atol=1e-2, rtol=8e-3)  # K rotary: <= 1 ulp (fma)
    torch.testing.assert_close(got[0].float(), want[0].float(), **tol)
