"""``build --target tensorrt`` and the TensorRT backend, up to the TensorRT call.

TensorRT cannot be installed here, so: the refusal without it (exit 2, nothing written); the
graph preparation, checked by running the prepared graph on the torch backend against the
plugin graph it came from (bit-identical logits) and by the ONNX checker; the optimization
profiles; and every check an engine directory passes before TensorRT reads it. Building and
running an engine is not tested.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from planforge.errors import (BackendUnavailableError, CompiledModelError, EngineBuildError, EngineMismatchError,
                              LoweringError, PluginVersionError, PromptTooLongError)
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.contextual_sparsity import SparsityOptions
from planforge.graph_passes.schemes import CalibrationError, QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions
from planforge.manifest import Manifest
from planforge.plugins import DOMAIN
from planforge.plugins.registry import plugin_op, register_onnx_schemas
from planforge.runtime import open_backend
from planforge.runtime.tensorrt_engine import (ENGINE_FILE, EngineSettings, check_engine, check_prompt,
                                               deserialize_failure, engine_section, profiles)

from sparsity_support import make_predictor

TRT_MISSING = pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                                 reason="TensorRT is installed here: the refusal without it cannot be shown")


def _prepared(source, out, **options):
    optimize(source, out, OptimizeOptions(target="tensorrt", force=True, **options))
    return out


def _lowered(source, out, **options):
    optimize(source, out, OptimizeOptions(target="torch", force=True, **options))
    return out


def _same_steps(a, b, prompt=5, decode=6, seed=0):
    """Unpadded prefill then greedy-fed decode steps on the torch backend: identical logits."""
    vocab = Manifest.load(a).dims.vocab_size
    ids = np.random.default_rng(seed).integers(1, vocab, (2, prompt + decode))
    runs = []
    for directory in (a, b):
        backend = open_backend(directory, "torch")
        mask = np.ones((2, prompt), np.int64)
        logits, cache = backend.forward(ids[:, :prompt], mask, np.tile(np.arange(prompt), (2, 1)),
                                        backend.empty_cache(2))
        steps = [logits]
        for t in range(decode):
            width = cache.length + 1
            logits, cache = backend.forward(ids[:, prompt + t:prompt + t + 1], np.ones((2, width), np.int64),
                                            np.full((2, 1), prompt + t), cache)
            steps.append(logits)
        runs.append(steps)
    for step, (x, y) in enumerate(zip(*runs)):
        np.testing.assert_array_equal(x, y, err_msg=f"step {step}")


def _check_prepared(directory):
    """Every plugin node names all its inputs, AOT ops carry aot=1, optional inputs their has_ flag; the
    checker and strict shape inference accept the graph."""
    register_onnx_schemas()
    model = onnx.load(str(directory / "model.onnx"))
    nodes = list(model.graph.node) + [n for node in model.graph.node for a in node.attribute if a.g.node
                                      for n in a.g.node]
    planforge = [n for n in nodes if n.domain == DOMAIN]
    assert planforge
    for node in planforge:
        schema = plugin_op(node.op_type).schema
        attributes = {a.name: a.i for a in node.attribute}
        assert len(node.input) == len(schema.inputs) and all(node.input), node.name
        assert attributes.get("aot", 0) == int(schema.tensorrt_aot), node.name
        assert {f"has_{t.name}" for t in schema.inputs if t.optional} <= set(attributes), node.name
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True),
                             full_check=True)
    return planforge


@TRT_MISSING
def test_build_without_tensorrt_exits_2_and_writes_nothing(tiny_model, tmp_path):
    out = tmp_path / "engine"
    proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", "build", str(tiny_model("llama", "bf16")[1]),
                           "-o", str(out), "--target", "tensorrt", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "TensorRT is not installed:" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@TRT_MISSING
def test_the_tensorrt_backend_without_tensorrt_says_what_to_install(tiny_model, tmp_path):
    engine_dir = _prepared(tiny_model("llama", "bf16")[1], tmp_path / "engine")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        open_backend(engine_dir, device="cuda")


def test_a_float32_model_is_refused_with_the_fix(tiny_model, tmp_path):
    with pytest.raises(LoweringError, match="float16 or bfloat16"):
        _prepared(tiny_model("llama")[1], tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_the_prepared_dense_graph_gives_the_plugin_graphs_logits(tiny_model, tmp_path):
    source = tiny_model("llama", "bf16")[1]
    prepared = _prepared(source, tmp_path / "trt")
    nodes = _check_prepared(prepared)
    update = next(n for n in nodes if n.op_type == "KVCacheUpdate")
    assert {a.name: a.i for a in update.attribute}["has_cos"] == 0  # keys arrive rotated: a placeholder
    manifest = Manifest.load(prepared)
    assert manifest.target == "tensorrt" and manifest.tensorrt is None  # no engine without TensorRT
    assert manifest.passes[-1]["name"] == "prepare_tensorrt"
    _same_steps(_lowered(source, tmp_path / "torch"), prepared)


def test_placeholders_stand_for_omitted_inputs_in_streaming_and_sparse_graphs(tiny_model, tmp_path):
    """Streaming stores keys unrotated (KVCacheUpdate without cos/sin, rotated at every decode); a qwen2
    sparse layer's SparseHeadsAttention has its q bias and rotary tables, so both flag values run. The
    sparse ops, split into their AOT steps, give the plugin graph's logits bit for bit (CPU references)."""
    streamed = tmp_path / "stream"
    optimize(tiny_model("llama", "bf16")[1], streamed, OptimizeOptions(streaming=StreamingOptions(2, 6),
                                                                       target="portable"))
    prepared = _prepared(streamed, tmp_path / "stream_trt")
    update = next(n for n in _check_prepared(prepared) if n.op_type == "KVCacheUpdate")
    assert {a.name: a.i for a in update.attribute}["has_cos"] == 0
    _same_steps(_lowered(streamed, tmp_path / "stream_torch"), prepared, prompt=4, decode=10)  # wraps the ring

    dense = tiny_model("qwen2", "bf16")[1]
    predictor = tmp_path / "predictor.safetensors"
    make_predictor(Manifest.load(dense).dims, predictor)
    sparse = tmp_path / "sparse"
    optimize(dense, sparse, OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor), target="portable"))
    prepared = _prepared(sparse, tmp_path / "sparse_trt")
    nodes = _check_prepared(prepared)
    heads = [n for n in nodes if n.op_type == "SparseHeadsQProj"]
    assert heads and all({a.name: a.i for a in n.attribute}["has_b_q"] == 1 and
                         {a.name: a.i for a in n.attribute}["has_cos"] == 1 for n in heads)
    # the multi-launch sparse ops are split into one AOT op per launch: an engine without Python
    kinds = {n.op_type for n in nodes}
    assert not kinds & {"SparseMLP", "SparseHeadsAttention"}
    assert {"SparseMLPGateUp", "SparseMLPDown", "SparseHeadsAttend", "SparseHeadsOProj"} <= kinds
    settings = Manifest.load(prepared).passes[-1]["settings"]
    assert settings["python_nodes"] == 0 and settings["split_nodes"] == len(heads) + sum(n.op_type == "SparseMLPGateUp" for n in nodes)
    attend = next(n for n in nodes if n.op_type == "SparseHeadsAttend")
    dims = Manifest.load(sparse).dims
    assert {a.name: a.i for a in attend.attribute}["group"] == dims.num_heads // dims.num_kv_heads
    _same_steps(_lowered(sparse, tmp_path / "sparse_torch"), prepared)


def test_the_quik_ops_are_marked_aot(tiny_model, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. Attention with a key value cache. " * 40)
    options = dict(quant=QuantOptions("w4a4", outliers="4"), calib=calib, calib_samples=4, calib_seq_len=32,
                   target="portable")
    with pytest.raises(CalibrationError, match="no bfloat16 MatMul"):  # calibration runs on ONNX Runtime
        optimize(tiny_model("llama", "bf16")[1], tmp_path / "refused", OptimizeOptions(**options))
    portable = tmp_path / "w4a4"
    optimize(tiny_model("llama", "fp16")[1], portable, OptimizeOptions(
        quant=QuantOptions("w4a4", outliers="4"), calib=calib, calib_samples=4, calib_seq_len=32, target="portable"))
    prepared = _prepared(portable, tmp_path / "trt")
    aot = {n.op_type for n in _check_prepared(prepared) if {a.name: a.i for a in n.attribute}.get("aot")}
    assert aot == {"KVCacheUpdate", "QuikQuantize", "QuikMatMul", "FusedAttentionPrefill", "FusedAttentionDecode"}
    assert Manifest.load(prepared).passes[-1]["settings"]["python_nodes"] == 0  # an engine C++ can run


# ---- the engine's profiles and checks (no TensorRT needed) ----------------------------------------

@pytest.fixture(scope="module")
def prepared_manifest(tiny_model, tmp_path_factory):
    directory = _prepared(tiny_model("llama", "bf16")[1], tmp_path_factory.mktemp("trt") / "engine")
    return directory, Manifest.load(directory)


def test_profiles_cover_prefill_and_decode(prepared_manifest):
    _, manifest = prepared_manifest
    capacity = manifest.io["kv_cache"][0]["capacity"]
    d = manifest.dims
    prefill, decode = profiles(manifest, EngineSettings(max_batch=4, opt_batch=2, max_prefill=capacity // 2))
    assert prefill.shapes["input_ids"] == ([1, 1], [2, min(128, capacity // 2)], [4, capacity // 2])
    assert prefill.shapes["past_lengths"] == ([1], [2], [4])
    assert decode.shapes["position_ids"] == ([1, 1], [2, 1], [4, 1])
    cache = [d.num_kv_heads, capacity, d.head_dim]
    assert decode.shapes["kv_cache.0.key"] == ([1, *cache], [2, *cache], [4, *cache])
    assert set(prefill.shapes) == {entry["name"] for entry in manifest.io["inputs"]}


@pytest.mark.parametrize("settings,message", [
    (EngineSettings(max_batch=2, opt_batch=3), "--opt-batch 3"),
    (EngineSettings(max_prefill=10**6), "over the model's cache"),
    (EngineSettings(max_prefill=8, opt_prefill=9), "--opt-prefill 9"),
])
def test_bad_engine_settings_are_refused(prepared_manifest, settings, message):
    with pytest.raises(EngineBuildError, match=message):
        profiles(prepared_manifest[1], settings)


def _engine_dir(prepared_manifest, tmp_path, **changes):
    """A copy of the prepared directory with an engine section as build_engine would write it, and a stand-in
    engine file (TensorRT never reads it here)."""
    import shutil

    source, manifest = prepared_manifest
    directory = tmp_path / "engine"
    shutil.copytree(source, directory)
    forms = {key: plugin_op(key.split("::")[1]).tensorrt_form for key in manifest.plugin_ops}
    section = engine_section("10.13.0", (9, 0), forms, manifest, profiles(manifest, EngineSettings()), "8.7")
    section.update(changes)
    data = json.loads((directory / "planforge.json").read_text())
    data["tensorrt"] = section
    (directory / "planforge.json").write_text(json.dumps(data))
    (directory / ENGINE_FILE).write_bytes(b"serialized engine")
    return directory, Manifest.load(directory)


def test_an_engine_built_here_passes_its_checks(prepared_manifest, tmp_path):
    directory, manifest = _engine_dir(prepared_manifest, tmp_path)
    assert check_engine(directory, manifest, "10.13.0", (9, 0)) == directory / ENGINE_FILE
    assert manifest.tensorrt["plugins"]["planforge::KVCacheUpdate"] == {"version": 2, "form": "aot"}
    assert manifest.tensorrt["plugins"]["planforge::FusedAttentionDecode"]["form"] == "aot"


def test_an_engine_for_another_tensorrt_or_gpu_is_refused(prepared_manifest, tmp_path):
    directory, manifest = _engine_dir(prepared_manifest, tmp_path)
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.13.0; this is TensorRT 11.4.0"):
        check_engine(directory, manifest, "11.4.0", (9, 0))
    with pytest.raises(EngineMismatchError, match="compute capability 9.0; this GPU is 8.9"):
        check_engine(directory, manifest, "10.13.0", (8, 9))


def test_a_missing_or_empty_engine_is_refused(prepared_manifest, tmp_path):
    directory, manifest = _engine_dir(prepared_manifest, tmp_path)
    (directory / ENGINE_FILE).write_bytes(b"")
    with pytest.raises(CompiledModelError, match="missing or empty"):
        check_engine(directory, manifest, "10.13.0", (9, 0))
    source, plain = prepared_manifest
    with pytest.raises(CompiledModelError, match="no TensorRT engine"):
        check_engine(source, plain, "10.13.0", (9, 0))


def test_a_plugin_version_this_planforge_lacks_is_named(prepared_manifest, tmp_path):
    directory, manifest = _engine_dir(prepared_manifest, tmp_path)
    manifest.tensorrt["plugins"]["planforge::KVCacheUpdate"]["version"] = 7
    with pytest.raises(PluginVersionError, match="planforge::KVCacheUpdate version 7; this planforge has version 2"):
        check_engine(directory, manifest, "10.13.0", (9, 0))


def test_a_failed_deserialization_names_the_plugins_tensorrt_named(prepared_manifest, tmp_path):
    directory, manifest = _engine_dir(prepared_manifest, tmp_path)
    error = deserialize_failure(directory / ENGINE_FILE, manifest,
                                ["getPluginCreator could not find plugin: FusedAttentionDecode version: 2"])
    assert "planforge::FusedAttentionDecode v2 (aot)" in str(error) and "KVCacheUpdate" not in str(error)
    assert "load_tensorrt_plugins" in str(error)


def test_a_prompt_beyond_the_profile_is_refused(prepared_manifest, tmp_path):
    _, manifest = _engine_dir(prepared_manifest, tmp_path)
    check_prompt(manifest.tensorrt["profiles"], 8, 1)
    with pytest.raises(PromptTooLongError, match="decode profile takes at most 8 x 1"):
        check_prompt(manifest.tensorrt["profiles"], 9, 1)
    longest = manifest.tensorrt["profiles"][0]["shapes"]["input_ids"][2][1]
    with pytest.raises(PromptTooLongError, match=f"prefill profile takes at most 8 x {longest}"):
        check_prompt(manifest.tensorrt["profiles"], 1, longest + 1)
