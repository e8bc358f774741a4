"""The sparse ops' TensorRT AOT plugins: SparseMLPGateUp/SparseMLPDown and SparseHeadsQProj/SparseHeadsAttend/
SparseHeadsOProj, the one-launch steps the TensorRT graph preparation splits SparseMLP and SparseHeadsAttention
into. On the CPU: each payload compiles for sm_90 and ptxas accepts it, and its grid and scalars are what the
op's Python launcher passes its kernel. On a GPU: each payload, launched as TensorRT launches it, against the
op's reference. (tests/plugins/aot_entries_interpreted.py runs the entries on Triton's interpreter.)"""

from __future__ import annotations

import pytest
import torch

import tensorrt_double
from tensorrt_payloads import LaunchRecorder, aot_payload, check_payload, driver_launch, grid3, trt_api  # noqa: F401


@pytest.mark.parametrize("dtype,B,d,k", [("bfloat16", 1, 4096, 5504), ("float16", 16, 896, 300)])
def test_sparse_mlp_aot_payloads_match_their_launchers(trt_api, monkeypatch, dtype, B, d, k):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.sparse_mlp import kernel

    F, t, torch_dtype = 11008, getattr(trt, dtype), getattr(torch, dtype)
    x, w = torch.zeros(B, d, dtype=torch_dtype), torch.zeros(F, d, dtype=torch_dtype)
    neurons, h = torch.zeros(B, k, dtype=torch.int32), torch.zeros(B, k)
    desc = lambda shape, kind: tensorrt_double.TensorDesc(shape, kind)  # noqa: E731
    gate_up = aot_payload(registry, "planforge::SparseMLPGateUp", [desc(x.shape, t), desc(w.shape, t), desc(w.shape, t),
                                                             desc(neurons.shape, trt.int32)], {}, None)
    down = aot_payload(registry, "planforge::SparseMLPDown", [desc(h.shape, trt.float32), desc(w.shape, t),
                                                        desc(neurons.shape, trt.int32)], {}, None)
    for (name, ptx, *_), inputs in ((gate_up, 4), (down, 3)):
        check_payload(aot, name, ptx, n_tensors=inputs + 1, n_scalars=2)

    for entry, launcher, args, (_, _, grid, launch, extras) in (
            ("gate_up_entry", kernel.gate_up, (x, w, w, neurons), gate_up),
            ("down_entry", kernel.down, (h, w, neurons), down)):
        recorder = LaunchRecorder(getattr(kernel, entry))
        monkeypatch.setattr(kernel, entry, recorder)
        launcher(*args)
        (py_grid, py_args, constexprs), = recorder.calls
        assert grid == grid3(py_grid) and launch.block_x == constexprs["num_warps"] * 32, entry
        assert extras == [py_args["d"], py_args["k"]], entry


@pytest.mark.parametrize("dtype,B,Hq,Hkv,D,h,bias,rotary", [("bfloat16", 1, 32, 8, 128, 16, False, True),
                                                            ("float16", 4, 14, 2, 64, 7, True, False)])
def test_sparse_heads_aot_payloads_match_their_launchers(trt_api, monkeypatch, dtype, B, Hq, Hkv, D, h, bias, rotary):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.fused_attention import kernel as attn_kernel
    from planforge.plugins.sparse_heads import kernel, tensorrt as plugin

    d, C, t, torch_dtype = 4096 if D == 128 else 1536, 1024, getattr(trt, dtype), getattr(torch, dtype)
    x, w = torch.zeros(B, d, dtype=torch_dtype), torch.zeros(Hq * D, d, dtype=torch_dtype)
    heads, lengths = torch.zeros(B, h, dtype=torch.int32), torch.ones(B, dtype=torch.int32)
    q, cache = torch.zeros(B, h, D, dtype=torch_dtype), torch.zeros(B, Hkv, C, D, dtype=torch_dtype)
    table = torch.zeros(B, D // 2) if rotary else torch.zeros(1)
    bias_t = torch.zeros(Hq * D, dtype=torch_dtype) if bias else torch.zeros(1, dtype=torch_dtype)
    desc = lambda x, kind=t: tensorrt_double.TensorDesc(x.shape, kind)  # noqa: E731
    flags = {"has_b_q": int(bias), "has_cos": int(rotary), "has_sin": int(rotary)}

    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::SparseHeadsQProj", [
        desc(x), desc(w), desc(heads, trt.int32), desc(bias_t), desc(table, trt.float32), desc(table, trt.float32)],
        {"head_dim": D, **flags}, None)
    check_payload(aot, name, ptx, n_tensors=6 + 1, n_scalars=2)
    recorder = LaunchRecorder(kernel.q_kernel)
    monkeypatch.setattr(kernel, "q_kernel", recorder)
    kernel.q_proj(x, w, heads, bias_t if bias else None, table if rotary else None, table if rotary else None, D)
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid) and extras == [args["d"], args["h"]]
    assert (constexprs["HAS_BIAS"], constexprs["ROTARY"], constexprs["HALF"]) == (bias, rotary, D // 2)
    with pytest.raises(ValueError, match="multiple of 256"):  # the kernel's tile; the launcher asserts the same
        aot_payload(registry, "planforge::SparseHeadsQProj", [
            desc(torch.zeros(B, 896)), desc(torch.zeros(Hq * D, 896)), desc(heads, trt.int32), desc(bias_t),
            desc(table, trt.float32), desc(table, trt.float32)], {"head_dim": D, **flags}, None)

    for tactic, (block_n, warps, stages) in plugin.ATTEND_TACTICS.items():
        name, ptx, grid, launch, extras = aot_payload(registry, "planforge::SparseHeadsAttend", [
            desc(q), desc(cache), desc(cache), desc(lengths, trt.int32), desc(heads, trt.int32)],
            {"scale": 0.0, "group": Hq // Hkv}, tactic)
        check_payload(aot, name, ptx, n_tensors=5 + 1, n_scalars=len(plugin.ATTEND_SCALARS))
        recorder = LaunchRecorder(attn_kernel.decode_split_kernel.fn)
        monkeypatch.setattr(attn_kernel, "decode_split_kernel", recorder)
        monkeypatch.setattr(attn_kernel, "decode_combine_kernel", LaunchRecorder(attn_kernel.decode_combine_kernel))
        attn_kernel.decode(q, cache, cache, lengths, 0.0, num_splits=1, groups=heads, group_div=Hq // Hkv,
                           config=(block_n, warps, stages, False))
        (py_grid, args, constexprs), = recorder.calls
        assert grid == grid3(py_grid) and launch.block_x == warps * 32  # one split per selected head
        assert extras == [args[n] for n in plugin.ATTEND_SCALARS] and args["Hq"] == args["NG"] == h
        assert (constexprs["G"], constexprs["GROUP_DIV"], constexprs["HAS_GROUPS"]) == (1, Hq // Hkv, True)

    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::SparseHeadsOProj", [
        desc(q), desc(w), desc(heads, trt.int32)], {}, None)
    check_payload(aot, name, ptx, n_tensors=3 + 1, n_scalars=2)
    recorder = LaunchRecorder(kernel.oproj_entry)
    monkeypatch.setattr(kernel, "oproj_entry", recorder)
    kernel.o_proj(q, w, heads)
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid) and extras == [args["d"], args["h"]] and constexprs["D"] == D


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,B,k", [(torch.bfloat16, 1, 5504), (torch.float16, 16, 2000)])
def test_sparse_mlp_payloads_run_as_tensorrt_launches_them(trt_api, dtype, B, k):
    trt, _, registry, _, _ = trt_api
    from planforge.plugins.sparse_mlp import reference

    g = torch.Generator().manual_seed(k)
    d, F = 4096, 11008
    x = torch.randn(B, d, generator=g).to(dtype).cuda()
    w_gate, w_up, w_down_t = ((torch.randn(F, d, generator=g) * d**-0.5).to(dtype).cuda() for _ in range(3))
    neurons = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)]).to(torch.int32).cuda()
    t = getattr(trt, str(dtype).split(".")[1])
    desc = lambda x, kind=t: tensorrt_double.TensorDesc(x.shape, kind)  # noqa: E731
    name, ptx, _, launch, extras = aot_payload(registry, "planforge::SparseMLPGateUp", [
        desc(x), desc(w_gate), desc(w_up), desc(neurons, trt.int32)], {}, None)
    h = torch.full((B, k), float("nan"), device="cuda")
    driver_launch(ptx, name, launch, [x, w_gate, w_up, neurons, *extras, h])
    want_h = reference.gate_up(x, w_gate, w_up, neurons)
    torch.testing.assert_close(h, want_h, rtol=1e-4, atol=1e-4 * want_h.abs().max().item())  # float32, other order

    name, ptx, _, launch, extras = aot_payload(registry, "planforge::SparseMLPDown", [
        desc(want_h, trt.float32), desc(w_down_t), desc(neurons, trt.int32)], {}, None)
    y = torch.full((B, d), float("nan"), dtype=dtype, device="cuda")
    driver_launch(ptx, name, launch, [want_h, w_down_t, neurons, *extras, y])
    want = reference.down(want_h, w_down_t, neurons)
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11  # one rounding to the output dtype, as test_sparse_mlp
    torch.testing.assert_close(y.float(), want.float(), rtol=2 * eps, atol=2 * eps * want.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("tactic,bias,rotary", [(1, False, True), (2, True, False)])
def test_sparse_heads_payloads_run_as_tensorrt_launches_them(trt_api, tactic, bias, rotary):
    trt, _, registry, _, _ = trt_api
    from planforge.plugins.sparse_heads import reference

    g = torch.Generator().manual_seed(tactic)
    B, Hq, Hkv, D, h, d, C = 2, 32, 8, 128, 16, 4096, 1024
    x = torch.randn(B, d, generator=g).bfloat16().cuda()
    w_q, w_o = ((torch.randn(Hq * D, d, generator=g) * d**-0.5).bfloat16().cuda() for _ in range(2))
    b_q = torch.randn(Hq * D, generator=g).bfloat16().cuda() if bias else torch.zeros(1).bfloat16().cuda()
    table = [torch.randn(B, D // 2, generator=g).cuda() for _ in range(2)] if rotary else [torch.zeros(1).cuda()] * 2
    heads = torch.stack([torch.randperm(Hq, generator=g)[:h] for _ in range(B)]).to(torch.int32).cuda()
    kc, vc = (torch.randn(B, Hkv, C, D, generator=g).bfloat16().cuda() for _ in range(2))
    lengths = torch.tensor([33, 1024], dtype=torch.int32).cuda()
    desc = lambda x, kind=trt.bfloat16: tensorrt_double.TensorDesc(x.shape, kind)  # noqa: E731

    name, ptx, _, launch, extras = aot_payload(registry, "planforge::SparseHeadsQProj", [
        desc(x), desc(w_q), desc(heads, trt.int32), desc(b_q), desc(table[0], trt.float32),
        desc(table[1], trt.float32)], {"head_dim": D, "has_b_q": int(bias), "has_cos": int(rotary),
                                      "has_sin": int(rotary)}, None)
    q = torch.full((B, h, D), float("nan"), dtype=torch.bfloat16, device="cuda")
    driver_launch(ptx, name, launch, [x, w_q, heads, b_q, *table, *extras, q])
    want_q = reference.q_proj(x, w_q, heads, b_q if bias else None, *(table if rotary else (None, None)), D)
    torch.testing.assert_close(q.float(), want_q.float(), rtol=2 * 2.0**-8, atol=1e-2)  # <= 1 bf16 rounding apart

    name, ptx, _, launch, extras = aot_payload(registry, "planforge::SparseHeadsAttend", [
        desc(want_q), desc(kc), desc(vc), desc(lengths, trt.int32), desc(heads, trt.int32)],
        {"scale": 0.0, "group": Hq // Hkv}, tactic)
    attn = torch.full_like(want_q, float("nan"))
    driver_launch(ptx, name, launch, [want_q, kc, vc, lengths, heads, *extras, attn])
    want_attn = reference.attend(want_q.float(), kc.float(), vc.float(), lengths, heads, 0.0, Hq // Hkv)
    torch.testing.assert_close(attn.float(), want_attn, rtol=0, atol=2e-2)  # bf16 output, as the decode payload

    name, ptx, _, launch, extras = aot_payload(registry, "planforge::SparseHeadsOProj", [
        desc(attn), desc(w_o), desc(heads, trt.int32)], {}, None)
    y = torch.full((B, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    driver_launch(ptx, name, launch, [attn, w_o, heads, *extras, y])
    want = reference.o_proj(attn, w_o, heads)
    torch.testing.assert_close(y.float(), want.float(), rtol=2 * 2.0**-8, atol=2 * 2.0**-8 * want.abs().max().item())
