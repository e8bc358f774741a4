"""The TensorRT QDP plugins (plugins/*/tensorrt.py), everything up to the TensorRT call.

TensorRT cannot be installed here, so ``tensorrt_double`` stands in for ``tensorrt.plugin``:
these tests run the real registration, shape, autotune, Python-impl and AOT functions. The AOT
payloads are real: Triton compiles each entry kernel for sm_90, Triton's bundled ptxas assembles
the PTX, and the launch grid and extra scalars are compared with what the op's own Python
launcher passes its kernel for the same shapes. What TensorRT itself would do with them is not
tested.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import tensorrt_double
from planforge.errors import BackendUnavailableError
from planforge.plugins.registry import load_tensorrt_plugins, plugin_op, plugin_ops
from tensorrt_payloads import LaunchRecorder, aot_payload, check_payload, driver_launch, grid3, trt_api  # noqa: F401

ATTR_TYPES = {"int": int, "float": float}


def test_without_tensorrt_loading_the_plugins_says_so():
    try:
        import tensorrt  # noqa: F401  (only whether it imports)
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        load_tensorrt_plugins()


def test_every_op_has_a_plugin_in_its_declared_form(trt_api):
    _, _, registry, forms, _ = trt_api
    assert set(forms) == set(plugin_ops())
    for key, op in plugin_ops().items():
        kinds = set(registry[key])
        assert {"register", "autotune", "impl"} <= kinds, key
        assert ("aot_impl" in kinds) == op.schema.tensorrt_aot == (forms[key] == "aot"), key
        assert "tensorrt" in op.backends


def test_plugin_signatures_follow_the_schema(trt_api):
    _, trtp, registry, _, _ = trt_api
    for key, op in plugin_ops().items():
        s = op.schema
        tensors = [t.name for t in s.inputs]
        attributes = [a.name for a in s.attributes] + [f"has_{t.name}" for t in s.inputs if t.optional]
        register = inspect.signature(registry[key]["register"]).parameters
        assert list(register) == tensors + attributes, key
        assert all(register[n].annotation in (trtp.TensorDesc, "trtp.TensorDesc") for n in tensors), key
        for a in s.attributes:  # the schema's default, in the plugin's attribute type
            assert register[a.name].default == a.default and str(register[a.name].annotation) in (
                ATTR_TYPES[a.type].__name__, str(ATTR_TYPES[a.type])), (key, a.name)
        for kind, tail in (("autotune", ["outputs"]), ("impl", ["outputs", "stream"]),
                           ("aot_impl", ["outputs", "tactic"])):
            if kind in registry[key]:
                params = list(inspect.signature(registry[key][kind]).parameters)
                if kind == "aot_impl" and "tactic" not in params:  # optional: for ops with one kernel config
                    tail = ["outputs"]
                assert params == tensors + attributes + tail, (key, kind)


# ---- one small case per op: CPU tensors, attributes ----------------------------------------------

def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    i32 = lambda *values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    B, Hq, Hkv, D, C, d = 2, 4, 2, 8, 12, 16
    from planforge.plugins.w4a4_gemm import reference as quik

    perm = torch.randperm(32, generator=g).to(torch.int32)
    x = r(5, 32)
    xq = quik.quantize_activations(x, perm, 4, 4)
    w = quik.quantize_weights(r(24, 32), perm, 4, 4)
    caches = lambda: [torch.zeros(B, Hkv, C, D), torch.zeros(B, Hkv, C, D)]  # noqa: E731
    return {
        "planforge::KVCacheUpdate": ([*caches(), r(B, Hkv, 3, D), r(B, Hkv, 3, D), i32(0, 5), r(B, 3, D // 2),
                                      r(B, 3, D // 2)], {"rolling": 1, "sinks": 2}),
        "planforge::QuikQuantize": ([x, perm], {"n_outliers": 4, "bits": 4}),
        "planforge::QuikMatMul": ([*xq, w.packed, w.scale, w.wsum, w.outliers.float()], {"bits": 4}),
        "planforge::FusedAttentionPrefill": ([r(1, Hq, 5, D), r(1, Hkv, 7, D), r(1, Hkv, 7, D)],
                                             {"scale": 0.0, "window": 3, "sinks": 1}),
        "planforge::FusedAttentionDecode": ([r(B, Hq, D), r(B, Hkv, C, D), r(B, Hkv, C, D), i32(3, 12)],
                                            {"scale": 0.3}),
        "planforge::SparseMLP": ([r(B, d), r(32, d), r(32, d), r(32, d), i32(1, 4, 9, 30, 2, 7, 11, 0).view(B, 4)], {}),
        "planforge::SparseHeadsAttention": ([r(B, d), r(Hq * D, d), r(Hq * D, d), r(B, Hkv, C, D), r(B, Hkv, C, D),
                                             i32(3, 12), i32(0, 3, 1, 2).view(B, 2), None, r(B, D // 2),
                                             r(B, D // 2)], {"scale": 0.0}),
        "planforge::SparseMLPGateUp": ([r(B, d), r(32, d), r(32, d), i32(1, 4, 9, 30, 2, 7, 11, 0).view(B, 4)], {}),
        "planforge::SparseMLPDown": ([r(B, 4), r(32, d), i32(1, 4, 9, 30, 2, 7, 11, 0).view(B, 4)], {}),
        "planforge::SparseHeadsQProj": ([r(B, d), r(Hq * D, d), i32(0, 3, 1, 2).view(B, 2), r(Hq * D), None, None],
                                        {"head_dim": D}),
        "planforge::SparseHeadsAttend": ([r(B, 2, D), r(B, Hkv, C, D), r(B, Hkv, C, D), i32(3, 12),
                                          i32(0, 3, 1, 2).view(B, 2)], {"scale": 0.0, "group": Hq // Hkv}),
        "planforge::SparseHeadsOProj": ([r(B, 2, D), r(Hq * D, d), i32(0, 3, 1, 2).view(B, 2)], {}),
    }


def _placeholders(op, inputs):
    """What the TensorRT graph preparation passes: a one-element tensor and has_<name>=0 for an omitted input."""
    flags = {f"has_{spec.name}": int(t is not None) for spec, t in zip(op.schema.inputs, inputs) if spec.optional}
    return [torch.zeros(1) if t is None else t for t in inputs], flags


@pytest.mark.parametrize("key", sorted(_cases()))
def test_output_shapes_and_dtypes_match_the_torch_op(trt_api, key):
    trt, _, registry, _, _ = trt_api
    op = plugin_op(key.split("::")[1])
    inputs, attributes = _cases()[key]
    expected = op.run([t.clone() if t is not None else None for t in inputs], attributes)
    filled, flags = _placeholders(op, inputs)
    descs = [tensorrt_double.TensorDesc(t.shape, getattr(trt, tensorrt_double.DTYPES[t.dtype])) for t in filled]
    outputs = registry[key]["register"](*descs, **attributes, **flags)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == len(expected) == len(op.schema.outputs)
    aliases = dict(op.schema.aliases)
    for spec, desc, value in zip(op.schema.outputs, outputs, expected):
        assert tuple(desc.shape_expr) == tuple(value.shape), (key, spec.name)
        assert desc.dtype == tensorrt_double.DTYPES[value.dtype], (key, spec.name)
        if spec.name in aliases:
            names = [s.name for s in op.schema.inputs]
            assert desc.alias_of is descs[names.index(aliases[spec.name])], (key, spec.name)


@pytest.mark.parametrize("key", sorted(_cases()))
def test_python_impl_writes_the_torch_op_results_into_tensorrt_outputs(trt_api, key, monkeypatch):
    trt, _, registry, _, glue = trt_api
    monkeypatch.setattr(glue, "as_torch", lambda t: t.value)
    op = plugin_op(key.split("::")[1])
    inputs, attributes = _cases()[key]
    expected = op.run([t.clone() if t is not None else None for t in inputs], attributes)
    filled, flags = _placeholders(op, [t.clone() if t is not None else None for t in inputs])
    wrapped = [tensorrt_double.Tensor(t, trt) for t in filled]
    aliases = dict(op.schema.aliases)
    names = [s.name for s in op.schema.inputs]
    outputs = tuple(wrapped[names.index(aliases[s.name])] if s.name in aliases
                    else tensorrt_double.Tensor(_garbage_like(e), trt)
                    for s, e in zip(op.schema.outputs, expected))
    registry[key]["impl"](*wrapped, **attributes, **flags, outputs=outputs, stream=0)
    for out, value in zip(outputs, expected):
        torch.testing.assert_close(out.value, value, rtol=0, atol=0)


def _garbage_like(t):
    """An output buffer as TensorRT hands it over: not zeroed."""
    return torch.full_like(t, float("nan")) if t.is_floating_point() else torch.full_like(t, 77)


# ---- AOT payloads: real Triton compiles for sm_90 ---------------------------------------------------

@pytest.mark.parametrize("dtype,rotary,rolling,tactic", [("float16", True, 0, 1), ("float16", False, 1, 2),
                                                         ("bfloat16", True, 1, 1)])
def test_kv_cache_update_aot_payload_matches_its_launcher(trt_api, monkeypatch, dtype, rotary, rolling, tactic):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.kv_cache_update import kernel, tensorrt as plugin

    B, H, C, D, S, sinks = 3, 2, 40, 64, 70, 4
    torch_dtype = getattr(torch, dtype)
    caches = [torch.zeros(B, H, C, D, dtype=torch_dtype) for _ in range(2)]
    new = [torch.zeros(B, H, S, D, dtype=torch_dtype) for _ in range(2)]
    table = torch.zeros(B, S, D // 2) if rotary else torch.zeros(1)
    t = getattr(trt, dtype)
    descs = [tensorrt_double.TensorDesc(x.shape, t) for x in caches + new] + [
        tensorrt_double.TensorDesc((B,), trt.int32), tensorrt_double.TensorDesc(table.shape, trt.float32),
        tensorrt_double.TensorDesc(table.shape, trt.float32)]
    attributes = {"rolling": rolling, "sinks": sinks, "has_cos": int(rotary), "has_sin": int(rotary)}
    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::KVCacheUpdate", descs, attributes, tactic)
    check_payload(aot, name, ptx, n_tensors=7 + 2, n_scalars=len(plugin.SCALARS))

    recorder = LaunchRecorder(kernel.kv_update_kernel)
    monkeypatch.setattr(kernel, "kv_update_kernel", recorder)
    monkeypatch.setattr(kernel, "BLOCK_S", plugin.TACTICS[tactic])
    kernel.kv_cache_update(*caches, *new, torch.zeros(B, dtype=torch.int32), table if rotary else None,
                           table if rotary else None, rolling=bool(rolling), sinks=sinks)
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid)
    assert extras == [args[n] for n in plugin.SCALARS]
    assert constexprs["BLOCK_S"] == plugin.TACTICS[tactic] and constexprs["ROTARY"] == rotary
    assert list(kernel.kv_update_entry.arg_names[7:7 + len(plugin.SCALARS)]) == list(plugin.SCALARS)


@pytest.mark.parametrize("bits,K,n_outliers,M", [(4, 4096, 128, 7), (8, 11008, 256, 1)])
def test_quik_quantize_aot_payload_matches_its_launcher(trt_api, monkeypatch, bits, K, n_outliers, M):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.w4a4_gemm import kernel, tensorrt as plugin

    descs = [tensorrt_double.TensorDesc((M, K), trt.float16), tensorrt_double.TensorDesc((K,), trt.int32)]
    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::QuikQuantize", descs,
                                           {"n_outliers": n_outliers, "bits": bits}, None)
    check_payload(aot, name, ptx, n_tensors=2 + 4, n_scalars=len(plugin.QUANTIZE_SCALARS))

    recorder = LaunchRecorder(kernel.quantize_kernel)
    monkeypatch.setattr(kernel, "quantize_kernel", recorder)
    kernel.quantize(torch.zeros(M, K, dtype=torch.float16), torch.arange(K, dtype=torch.int32), n_outliers, bits)
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid)
    assert extras == [args[n] for n in plugin.QUANTIZE_SCALARS]


@pytest.mark.parametrize("tactic,M", [(1, 9), (2, 40), (3, 100)])
def test_quik_matmul_aot_payload_matches_its_launcher(trt_api, monkeypatch, tactic, M):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.w4a4_gemm import kernel, tensorrt as plugin

    N, K, KO, bits = 4096, 4096, 128, 4
    KB = (K - KO) * bits // 8
    shapes = [((M, KB), trt.int8), ((M,), trt.float32), ((M,), trt.float32), ((M, KO), trt.float16),
              ((N, KB), trt.int8), ((N,), trt.float32), ((N,), trt.float32), ((N, KO), trt.float16)]
    descs = [tensorrt_double.TensorDesc(s, t) for s, t in shapes]
    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::QuikMatMul", descs, {"bits": bits}, tactic)
    check_payload(aot, name, ptx, n_tensors=8 + 1, n_scalars=len(plugin.MATMUL_SCALARS))

    bm, bn, bk, group_m, swap, warps, stages = plugin.GEMM_TACTICS[tactic]
    tensors = [torch.zeros(s, dtype={trt.int8: torch.int8, trt.float32: torch.float32,
                                     trt.float16: torch.float16}[t]) for s, t in shapes]
    x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out = tensors
    recorder = LaunchRecorder(kernel.quik_gemm_kernel.fn)
    monkeypatch.setattr(kernel, "quik_gemm_kernel", recorder)
    y = torch.empty(M, N, dtype=torch.float16)
    if bm == 16:  # the decode tile: the launcher's own small-M path, without its K split
        kernel._small_m(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits, False, y,
                        config=(bn, bk, warps, stages, 1, swap))
        (py_grid, args, constexprs), = recorder.calls
    else:  # the autotuned path: its grid for this tactic's tile
        kernel.matmul(x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out, bits)
        (py_grid, args, constexprs), = recorder.calls
        py_grid = py_grid({"BLOCK_M": bm, "BLOCK_N": bn})
    assert grid == grid3(py_grid)
    assert launch.block_x == warps * 32
    assert extras == [args[n] for n in plugin.MATMUL_SCALARS]


@pytest.mark.parametrize("tactic,D,window,sinks", [(1, 128, 0, 0), (2, 64, 100, 4), (3, 128, 0, 0)])
def test_fused_attention_prefill_aot_payload_matches_its_launcher(trt_api, monkeypatch, tactic, D, window, sinks):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.fused_attention import kernel, tensorrt as plugin

    B, Hq, Hkv, Sq, Skv = 2, 32, 8, 300, 310
    q = torch.zeros(B, Hq, Sq, D, dtype=torch.bfloat16)
    k = v = torch.zeros(B, Hkv, Skv, D, dtype=torch.bfloat16)
    descs = [tensorrt_double.TensorDesc(t.shape, trt.bfloat16) for t in (q, k, v)]
    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::FusedAttentionPrefill", descs,
                                           {"scale": 0.0, "window": window, "sinks": sinks}, tactic)
    check_payload(aot, name, ptx, n_tensors=3 + 1, n_scalars=len(plugin.PREFILL_SCALARS))
    values = dict(zip(plugin.PREFILL_SCALARS, extras))
    assert [values[n] for n in ("sqb", "sqh", "sqs", "skb", "skh", "sks")] == [*q.stride()[:3], *k.stride()[:3]]

    recorder = LaunchRecorder(kernel.prefill_kernel.fn)
    monkeypatch.setattr(kernel, "prefill_kernel", recorder)
    bm, bn, warps, stages = plugin.PREFILL_TACTICS[tactic]
    kernel.prefill(q, k, v, 0.0, window, sinks, config=(bm, bn, warps, stages))
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid) and launch.block_x == warps * 32
    assert [values[n] for n in ("Sq", "Skv", "Hq", "G", "window", "sinks", "sob", "soh", "sos")] == \
        [args[n] for n in ("Sq", "Skv", "Hq", "G", "window", "sinks", "sob", "soh", "sos")]
    assert constexprs["WINDOWED"] == (window > 0) and constexprs["BLOCK_M"] == bm


@pytest.mark.parametrize("tactic,B,Hq,Hkv,D", [(1, 3, 32, 8, 128), (2, 16, 14, 2, 64)])
def test_fused_attention_decode_aot_payload_matches_its_launcher(trt_api, monkeypatch, tactic, B, Hq, Hkv, D):
    pytest.importorskip("triton")
    trt, _, registry, _, _ = trt_api
    from planforge.plugins import aot
    from planforge.plugins.fused_attention import kernel, tensorrt as plugin

    C = 1024
    q = torch.zeros(B, Hq, D, dtype=torch.bfloat16)
    cache = torch.zeros(B, Hkv, C, D, dtype=torch.bfloat16)
    lengths = torch.ones(B, dtype=torch.int32)
    descs = [tensorrt_double.TensorDesc(q.shape, trt.bfloat16), tensorrt_double.TensorDesc(cache.shape, trt.bfloat16),
             tensorrt_double.TensorDesc(cache.shape, trt.bfloat16), tensorrt_double.TensorDesc((B,), trt.int32)]
    name, ptx, grid, launch, extras = aot_payload(registry, "planforge::FusedAttentionDecode", descs, {"scale": 0.0}, tactic)
    check_payload(aot, name, ptx, n_tensors=4 + 1, n_scalars=len(plugin.DECODE_SCALARS))

    recorder = LaunchRecorder(kernel.decode_split_kernel.fn)
    monkeypatch.setattr(kernel, "decode_split_kernel", recorder)
    monkeypatch.setattr(kernel, "decode_combine_kernel", LaunchRecorder(kernel.decode_combine_kernel))
    block_n, warps, stages = plugin.DECODE_TACTICS[tactic]
    kernel.decode(q, cache, cache, lengths, 0.0, num_splits=1, config=(block_n, warps, stages, False))
    (py_grid, args, constexprs), = recorder.calls
    assert grid == grid3(py_grid) and launch.block_x == warps * 32  # one split: (1, B * Hkv)
    assert extras == [args[n] for n in plugin.DECODE_SCALARS]
    assert (constexprs["NUM_SPLITS"], constexprs["G"], constexprs["BLOCK_N"]) == (1, Hq // Hkv, block_n)



def test_aot_entry_kernels_compute_the_reference_with_the_plugins_scalars():
    """The entries run on Triton's CPU interpreter with the grid and scalars the plugins give
    TensorRT (tests/plugins/aot_entries_interpreted.py): a misordered or wrong scalar shows here."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(tests / "plugins" / "aot_entries_interpreted.py")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AOT entries match the references" in result.stdout


# ---- on a GPU: the PTX payloads launched the way TensorRT launches them -------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("rolling,rotary", [(0, True), (1, False)])
def test_kv_cache_update_payload_runs_as_tensorrt_launches_it(trt_api, rolling, rotary):
    trt, _, registry, _, _ = trt_api
    from planforge.plugins.kv_cache_update import reference

    g = torch.Generator().manual_seed(rolling)
    B, H, C, D, S, sinks = 2, 8, 256, 128, 300 if rolling else 100, 4
    caches = [torch.randn(B, H, C, D, generator=g).bfloat16().cuda() for _ in range(2)]
    new = [torch.randn(B, H, S, D, generator=g).bfloat16().cuda() for _ in range(2)]
    positions = torch.tensor([0, 17], dtype=torch.int32).cuda()
    table = [torch.randn(B, S, D // 2, generator=g).cuda() for _ in range(2)] if rotary else [torch.zeros(1).cuda()] * 2
    want = [c.clone() for c in caches]
    reference.kv_cache_update(*want, *new, positions, *(table if rotary else (None, None)), bool(rolling), sinks)
    descs = [tensorrt_double.TensorDesc(t.shape, trt.bfloat16) for t in caches + new] + [
        tensorrt_double.TensorDesc(positions.shape, trt.int32)] + [
        tensorrt_double.TensorDesc(t.shape, trt.float32) for t in table]
    name, ptx, _, launch, extras = aot_payload(registry, "planforge::KVCacheUpdate", descs, {
        "rolling": rolling, "sinks": sinks, "has_cos": int(rotary), "has_sin": int(rotary)}, 1)
    driver_launch(ptx, name, launch, [*caches, *new, positions, *table, *extras, *caches])
    torch.testing.assert_close(caches[1], want[1], rtol=0, atol=0)  # V is a pure copy: bit-exact
    tol = dict(atol=1e-2, rtol=8e-3) if rotary else dict(atol=0, rtol=0)  # K rotary: <= 1 bf16 ulp (fma), as the
    torch.testing.assert_close(caches[0].float(), want[0].float(), **tol)  # Python launch (test_kv_cache_update)


@pytest.mark.gpu
@pytest.mark.parametrize("tactic,M", [(1, 1), (1, 16), (2, 200), (3, 600)])
def test_quik_payloads_run_as_tensorrt_launches_them(trt_api, tactic, M):
    trt, _, registry, _, _ = trt_api
    from planforge.plugins.w4a4_gemm import reference

    g = torch.Generator().manual_seed(M)
    K, N, KO, bits = 4096, 1024, 128, 4
    x = torch.randn(M, K, generator=g).half().cuda()
    perm = torch.randperm(K, generator=g).to(torch.int32).cuda()
    w = reference.quantize_weights(torch.randn(N, K, generator=g).cuda(), perm, KO, bits)
    name, ptx, _, launch, extras = aot_payload(registry, "planforge::QuikQuantize", [
        tensorrt_double.TensorDesc(x.shape, trt.float16), tensorrt_double.TensorDesc(perm.shape, trt.int32)],
        {"n_outliers": KO, "bits": bits}, None)
    kqb = (K - KO) * bits // 8
    quantized = [torch.empty(M, kqb, dtype=torch.int8, device="cuda"), torch.empty(M, device="cuda"),
                 torch.empty(M, device="cuda"), torch.empty(M, KO, dtype=torch.float16, device="cuda")]
    driver_launch(ptx, name, launch, [x, perm, *extras, *quantized])
    for got, expected in zip(quantized, reference.quantize_activations(x, perm, KO, bits)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # bit-exact

    inputs = [*quantized, w.packed, w.scale, w.wsum, w.outliers.half()]
    name, ptx, _, launch, extras = aot_payload(registry, "planforge::QuikMatMul", [
        tensorrt_double.TensorDesc(t.shape, {torch.int8: trt.int8, torch.float32: trt.float32,
                                            torch.float16: trt.float16}[t.dtype]) for t in inputs], {"bits": bits},
        tactic)
    y = torch.full((M, N), float("nan"), dtype=torch.float16, device="cuda")
    driver_launch(ptx, name, launch, [*inputs, *extras, y])
    want = reference.quik_matmul(*inputs, bits, torch.float32)
    torch.testing.assert_close(y.float(), want, rtol=2 * 2.0**-11, atol=1e-3 * want.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("tactic,window,sinks", [(1, 0, 0), (2, 300, 4), (3, 0, 0)])
def test_fused_attention_payloads_run_as_tensorrt_launches_them(trt_api, tactic, window, sinks):
    trt, _, registry, _, _ = trt_api
    from planforge.plugins.fused_attention import reference, tensorrt as plugin

    g = torch.Generator().manual_seed(tactic)
    B, Hq, Hkv, D, Sq, Skv, C = 2, 32, 8, 128, 700, 760, 1024
    q = torch.randn(B, Hq, Sq, D, generator=g).bfloat16().cuda()
    k, v = (torch.randn(B, Hkv, Skv, D, generator=g).bfloat16().cuda() for _ in range(2))
    name, ptx, _, launch, extras = aot_payload(registry, "planforge::FusedAttentionPrefill", [
        tensorrt_double.TensorDesc(t.shape, trt.bfloat16) for t in (q, k, v)],
        {"scale": 0.0, "window": window, "sinks": sinks}, tactic)
    out = torch.full_like(q, float("nan"))
    driver_launch(ptx, name, launch, [q, k, v, *extras, out])
    want = reference.attention_prefill(q.float(), k.float(), v.float(), 0.0, window, sinks)
    torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-2)  # bf16 output, float32 softmax

    if tactic in plugin.DECODE_TACTICS:
        qd = torch.randn(B, Hq, D, generator=g).bfloat16().cuda()
        kc, vc = (torch.randn(B, Hkv, C, D, generator=g).bfloat16().cuda() for _ in range(2))
        lengths = torch.tensor([33, 1024], dtype=torch.int32).cuda()
        name, ptx, _, launch, extras = aot_payload(registry, "planforge::FusedAttentionDecode", [
            tensorrt_double.TensorDesc(t.shape, trt.bfloat16) for t in (qd, kc, vc)] + [
            tensorrt_double.TensorDesc(lengths.shape, trt.int32)], {"scale": 0.0}, tactic)
        out = torch.full_like(qd, float("nan"))
        driver_launch(ptx, name, launch, [qd, kc, vc, lengths, *extras, out])
        want = reference.attention_decode(qd.float(), kc.float(), vc.float(), lengths)
        torch.testing.assert_close(out.float(), want, rtol=0, atol=2e-2)
