"""The plugin lowering (``build --target torch``): the lowered graph on the torch backend against ONNX Runtime on
the portable graph it came from, its structure and contract, and its refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from typer.testing import CliRunner

from planforge.cli.app import app
from planforge.errors import CompiledModelError, LoweringError, PluginVersionError
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.contextual_sparsity import SparsityOptions
from planforge.graph_passes.schemes import QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions
from planforge.manifest import Manifest
from planforge.plugins.registry import opset_version, register_onnx_schemas
from planforge.runtime import open_backend
from planforge.runtime.generator import GenerationConfig, Generator
from planforge.sparsity.predictor import Predictor

from sparsity_support import make_predictor

ATOL = 1e-4  # fp32 logits; the fused ops compute in float32 like ONNX Runtime, in another order


def build(portable, out, **options):
    optimize(portable, out, OptimizeOptions(target="torch", force=True, **options))
    return out


def assert_valid_onnx(lowered):
    """The checker (full) and strict shape inference pass once the planforge schemas are registered."""
    register_onnx_schemas()
    model = onnx.load(str(lowered / "model.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    onnx.checker.check_model(inferred, full_check=True)


def steps_agree(portable, lowered, pad=2, prompt=6, decode=8, seed=0):
    """Left-padded prefill then ``decode`` greedy steps on both; every step's logits within ATOL."""
    vocab = Manifest.load(portable).dims.vocab_size
    ids = np.random.default_rng(seed).integers(1, vocab, (2, prompt + decode))
    mask = np.ones((2, prompt), np.int64)
    mask[1, :pad] = 0
    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    runs = []
    for backend in (open_backend(portable, "onnxruntime"), open_backend(lowered)):
        logits, cache = backend.forward(ids[:, :prompt], mask, pos, backend.empty_cache(2))
        steps = [logits * mask[..., None]]  # padding rows are never read
        for t in range(decode):
            # a streaming cache holds fewer positions than were seen: the mask covers what it holds
            full = np.concatenate([mask, np.ones((2, t + 1), np.int64)], axis=1)[:, -(cache.length + 1):]
            logits, cache = backend.forward(ids[:, prompt + t:prompt + t + 1], full, pos[:, -1:] + t + 1, cache)
            steps.append(logits)
        runs.append(steps)
    for step, (oracle, lowered_logits) in enumerate(zip(*runs)):
        np.testing.assert_allclose(lowered_logits, oracle, atol=ATOL, rtol=0, err_msg=f"step {step}")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "granite", "smollm3", "gemma", "gemma3", "phi3", "opt", "gpt2"])
def test_every_family_matches_onnxruntime_on_the_portable_graph(tiny_model, tmp_path, family):
    portable = tiny_model(family)[1]
    lowered = build(portable, tmp_path / "lowered")
    assert open_backend(lowered).name == "torch"  # the manifest target picks the backend
    steps_agree(portable, lowered)  # mistral: a window of 8 over 14 positions, so the rolling cache wraps


def test_last_only_logits_are_the_last_column(tiny_model, tmp_path):
    portable = tiny_model("llama")[1]
    lowered = build(portable, tmp_path / "lowered")
    ids, mask = np.array([[5, 6, 7, 8], [0, 0, 9, 10]]), np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    for backend in (open_backend(portable, "onnxruntime"), open_backend(portable, "torch"), open_backend(lowered)):
        full, _ = backend.forward(ids, mask, pos, backend.empty_cache(2))
        last, _ = backend.forward(ids, mask, pos, backend.empty_cache(2), last_only=True)
        np.testing.assert_array_equal(last, full[:, -1:])


def test_an_unpadded_batch_prefills_in_one_run(tiny_model, tmp_path):
    portable = tiny_model("qwen2")[1]
    steps_agree(portable, build(portable, tmp_path / "lowered"), pad=0, decode=3)


def test_a_shared_context_with_continuations_matches_onnxruntime(tiny_model, tmp_path):
    """The multiple-choice path: one prompt, its cache repeated, right-padded continuations over it."""
    portable = tiny_model("mistral")[1]
    lowered = build(portable, tmp_path / "lowered")
    context, batch = np.array([[3, 4, 5, 6, 7]]), np.array([[8, 9, 10], [11, 0, 0]])
    results = []
    for backend in (open_backend(portable, "onnxruntime"), open_backend(lowered)):
        _, cache = backend.forward(context, np.ones_like(context), np.arange(5)[None], backend.empty_cache(1))
        logits, _ = backend.forward(batch, np.ones((2, 8), np.int64), np.broadcast_to(5 + np.arange(3), (2, 3)),
                                    backend.repeat_cache(cache, 2))
        results.append(logits)
    np.testing.assert_allclose(results[1][0], results[0][0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(results[1][1, :1], results[0][1, :1], atol=ATOL, rtol=0)  # the real token


def test_weight_only_quantized_graph_lowers_its_attention(tiny_model, tmp_path):
    portable = tmp_path / "w4a16"
    optimize(tiny_model("llama")[1], portable, OptimizeOptions(quant=QuantOptions(scheme="w4a16", group=32),
                                                               target="portable"))
    steps_agree(portable, build(portable, tmp_path / "lowered"))


def test_a_w4a4_model_lowers_its_linears_onto_the_quik_ops(tiny_model, tmp_path):
    """Per-linear exactness is tests/graph_passes/test_quik_rule.py; here the whole model is rewritten and runs."""
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. Attention with a key value cache. " * 40)
    portable = tmp_path / "w4a4"
    optimize(tiny_model("llama")[1], portable, OptimizeOptions(
        quant=QuantOptions("w4a4", outliers="4"), calib=calib, calib_samples=4, calib_seq_len=32, target="portable"))
    lowered = build(portable, tmp_path / "lowered")
    model = onnx.load(str(lowered / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuikMatMul") == 4 * 2 and ops.count("QuikQuantize") == 4 * 2  # q/k/v and gate/up share both
    assert "DequantizeLinear" not in ops and "Floor" not in ops  # the table stays float: no tied head here
    assert set(Manifest.load(lowered).plugin_ops) >= {"planforge::QuikQuantize", "planforge::QuikMatMul"}
    logits = open_backend(lowered).prefill_logits(np.array([[5, 6, 7, 8]]))
    assert logits.shape == (1, 4, Manifest.load(lowered).dims.vocab_size) and np.isfinite(logits).all()
    steps_agree(portable, lowered)  # the stacked sibling GEMMs (q/k/v, gate/up) split back into each one's numbers


def test_the_lowered_graph_and_its_contract(tiny_model, tmp_path):
    lowered = build(tiny_model("llama")[1], tmp_path / "lowered")
    model = onnx.load(str(lowered / "model.onnx"))
    ops = [n for n in model.graph.node] + [n for node in model.graph.node if node.op_type == "If"
                                            for a in node.attribute for n in a.g.node]
    assert not any(n.op_type == "Attention" for n in ops)
    plugins = [n for n in ops if n.domain == "planforge"]
    assert {n.op_type for n in plugins} == {"KVCacheUpdate", "FusedAttentionPrefill", "FusedAttentionDecode"}
    assert len(plugins) == 3 * 2  # two layers
    for node in plugins:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"planforge" and attrs["plugin_version"] == b"2"
    assert {o.domain: o.version for o in model.opset_import}["planforge"] == opset_version()
    assert_valid_onnx(lowered)
    manifest = Manifest.load(lowered)
    assert manifest.target == "torch" and manifest.io["version"] == 2
    assert manifest.plugin_ops == {"planforge::KVCacheUpdate": 2, "planforge::FusedAttentionPrefill": 2,
                                   "planforge::FusedAttentionDecode": 2}
    assert [i.name for i in model.graph.input][:3] == ["input_ids", "position_ids", "past_lengths"]
    assert [e["name"] for e in manifest.io["inputs"]] == [i.name for i in model.graph.input]
    assert [e["name"] for e in manifest.io["outputs"]] == [o.name for o in model.graph.output]
    assert not (lowered / "genai_config.json").exists()  # ORT-GenAI cannot run this contract


def test_a_streaming_graph_lowers_onto_a_rolling_sink_cache(tiny_model, tmp_path):
    """2 sinks + a window of 6 over 18 positions: the rolling cache wraps twice, and every step's positions are
    the portable graph's (ranks in the kept cache)."""
    streamed = tmp_path / "stream"
    optimize(tiny_model("llama")[1], streamed, OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
    lowered = build(streamed, tmp_path / "lowered")
    manifest = Manifest.load(lowered)
    assert manifest.plugin_ops == {"planforge::KVCacheUpdate": 2, "planforge::FusedAttentionPrefill": 2,
                                   "planforge::FusedAttentionDecode": 2}
    assert manifest.io["kv_cache"][0] == {"layer": 0, "capacity": 8, "rolling": True, "sinks": 2}
    assert manifest.streaming["cache_slots"] == 8
    steps_agree(streamed, lowered, pad=0, prompt=4, decode=14)  # streaming batches are never padded
    assert_valid_onnx(lowered)


def test_a_lowered_streaming_model_generates_past_max_seq_len(tiny_model, tmp_path):
    """The Generator's streaming loop on both backends: greedy tokens agree for 270 positions (max_seq_len 256)."""
    streamed = tmp_path / "stream"
    optimize(tiny_model("llama")[1], streamed, OptimizeOptions(streaming=StreamingOptions(2, 14), target="portable"))
    lowered = build(streamed, tmp_path / "lowered")
    config = GenerationConfig(max_new_tokens=262, ignore_eos=True)
    prompt = [[5, 9, 11, 3, 7, 2, 8, 4]]
    want = Generator(open_backend(streamed, "onnxruntime")).generate(prompt, config).tokens
    got = Generator(open_backend(lowered)).generate(prompt, config).tokens
    assert len(got[0]) == 262 and got == want


def test_a_streaming_model_with_its_own_window_is_refused_or_kept(tiny_model, tmp_path):
    streamed = tmp_path / "stream"
    optimize(tiny_model("mistral")[1], streamed, OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
    with pytest.raises(LoweringError, match=r"Attention\): a streaming model with its own sliding window .*\(and 1 "
                                            r"more like it\)\. Pass --allow-partial"):
        build(streamed, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    kept = build(streamed, tmp_path / "partial", allow_partial=True)
    assert Manifest.load(kept).target == "torch" and Manifest.load(kept).plugin_ops == {}
    steps_agree(streamed, kept, pad=0, prompt=4, decode=6)


def sparse(portable, out, seed=0, **options):
    """The portable sparse graph: 50% of heads (layers >= 1) and of neurons, a random predictor."""
    predictor = out.parent / f"{out.name}.predictor.safetensors"
    make_predictor(Manifest.load(portable).dims, predictor, seed=seed)
    optimize(portable, out, OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor), target="portable",
                                            **options))
    return out, predictor


def weight_bytes(directory) -> int:
    """Bytes of the float initializers (the int64 shape and index constants left out)."""
    return sum(t.const_value.nbytes for t in ir.load(directory / "model.onnx").graph.initializers.values()
               if t.const_value.dtype.is_floating_point())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])  # GQA; q bias; a rolling window
def test_a_sparse_graph_lowers_onto_the_sparse_ops(tiny_model, tmp_path, family):
    """The same selections on both sides (the predictor is in the graph): the lowered decode reads the selected
    heads' and neurons' rows in place, and the artifact holds the dense weights plus the predictor's."""
    dense = tiny_model(family)[1]
    portable, predictor = sparse(dense, tmp_path / "sparse")
    lowered = build(portable, tmp_path / "lowered")
    assert Manifest.load(lowered).plugin_ops == {
        "planforge::SparseHeadsAttention": 3, "planforge::SparseMLP": 2, "planforge::KVCacheUpdate": 2,
        "planforge::FusedAttentionPrefill": 2, "planforge::FusedAttentionDecode": 2}
    steps_agree(portable, lowered)  # mistral: the window of 8 wraps its rolling cache
    assert_valid_onnx(lowered)
    graph = ir.load(lowered / "model.onnx").graph
    nodes = list(ir.traversal.RecursiveGraphIterator(graph))
    assert sum(n.op_type == "SparseHeadsAttention" for n in nodes) == 1  # layer 0's heads stay dense
    assert sum(n.op_type == "SparseMLP" for n in nodes) == 2
    assert not any(name.endswith(".sparse_rows") for name in graph.initializers)  # no gathered copies
    predictor_bytes = sum(t.nbytes for t in Predictor.load(predictor).tensors.values())
    assert weight_bytes(portable) > weight_bytes(dense) + predictor_bytes
    assert weight_bytes(lowered) <= weight_bytes(dense) + predictor_bytes


def test_a_sparse_mlp_the_op_cannot_express_stays_masked_with_allow_partial(tiny_model, tmp_path):
    """GPT-2's MLP is GELU without a gate: its decode keeps the masked dense form; its heads (no rotary, biased q)
    lower onto SparseHeadsAttention."""
    portable, _ = sparse(tiny_model("gpt2")[1], tmp_path / "sparse")
    with pytest.raises(LoweringError, match=r"\(Mul\): the masked MLP is not SiLU\(x Wg\) \* \(x Wu\) without biases"):
        build(portable, tmp_path / "refused")
    lowered = build(portable, tmp_path / "lowered", allow_partial=True)
    assert "planforge::SparseHeadsAttention" in Manifest.load(lowered).plugin_ops
    assert "planforge::SparseMLP" not in Manifest.load(lowered).plugin_ops
    steps_agree(portable, lowered)


def test_a_quantized_sparse_graph_is_refused_with_the_reason(tiny_model, tmp_path):
    portable, _ = sparse(tiny_model("llama")[1], tmp_path / "sparse", quant=QuantOptions(scheme="w4a16", group=32))
    with pytest.raises(LoweringError, match="weights are quantized; SparseHeadsAttention and SparseMLP read float"):
        build(portable, tmp_path / "refused")


def test_soft_capped_attention_is_refused_with_the_reason(tiny_model, tmp_path):
    """Gemma 2 caps its attention scores; the fused ops have no cap, so its attention stays standard."""
    with pytest.raises(LoweringError, match=r"Attention\): is_causal, softcap or qk_matmul_output_mode is set"):
        build(tiny_model("gemma2")[1], tmp_path / "out")
    kept = build(tiny_model("gemma2")[1], tmp_path / "partial", allow_partial=True)
    steps_agree(tiny_model("gemma2")[1], kept, decode=3)


def test_an_op_version_this_planforge_lacks_is_refused(tiny_model, tmp_path):
    lowered = tmp_path / "old"
    shutil.copytree(build(tiny_model("llama")[1], tmp_path / "lowered"), lowered)
    manifest = json.loads((lowered / "planforge.json").read_text())
    manifest["plugin_ops"]["planforge::KVCacheUpdate"] = 1
    (lowered / "planforge.json").write_text(json.dumps(manifest))
    with pytest.raises(PluginVersionError, match="lowered with planforge::KVCacheUpdate version 1; this planforge "
                                                 "has version 2"):
        open_backend(lowered)
    manifest["plugin_ops"]["planforge::KVCacheUpdate"] = 2
    manifest["io"]["version"] = 1
    (lowered / "planforge.json").write_text(json.dumps(manifest))
    with pytest.raises(CompiledModelError, match="lowered with I/O contract version 1; this planforge runs version 2. "
                                                 "Rebuild it: `planforge build "):
        open_backend(lowered)


def test_build_cli(tiny_model, tmp_path):
    result = CliRunner().invoke(app, ["build", str(tiny_model("gpt2")[1]), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert "lower_plugins: 2 rewritten" in result.output and "planforge::KVCacheUpdate v2" in result.output
    result = CliRunner().invoke(app, ["run", str(tmp_path / "out"), "-p", "The quick", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------------- CUDA
REFERENCE = Path(__file__).resolve().parents[2] / "samples" / "reference_model"
KINDS = ("dense", "sparse", "streaming")


def _reference_kinds(root, dtype):
    """The shipped reference model (head dim 64, which the Triton kernels take) exported in ``dtype``, made sparse
    (50% / 50%, the shipped predictor) and streaming (4 sinks + 28: a 32-slot cache that wraps during decode):
    {kind: (portable, lowered)}."""
    from planforge.exporter.api import ExportOptions, export

    export(str(REFERENCE), root / "dense", ExportOptions(dtype=dtype))
    optimize(root / "dense", root / "sparse", OptimizeOptions(
        sparsity=SparsityOptions(0.5, 0.5, REFERENCE / "sparsity_predictor.safetensors"), target="portable"))
    optimize(root / "dense", root / "streaming", OptimizeOptions(streaming=StreamingOptions(4, 28), target="portable"))
    return {kind: (root / kind, build(root / kind, root / f"{kind}_lowered")) for kind in KINDS}


@pytest.fixture(scope="module")
def reference_bf16(tmp_path_factory):
    return _reference_kinds(tmp_path_factory.mktemp("reference_bf16"), "bf16")


@pytest.fixture(scope="module")
def reference_fp32(tmp_path_factory):
    return _reference_kinds(tmp_path_factory.mktemp("reference_fp32"), "fp32")


def _decode_run(backend, ids, prompt, steps):
    B = ids.shape[0]
    logits, cache = backend.forward(ids[:, :prompt], np.ones((B, prompt), np.int64),
                                    np.tile(np.arange(prompt), (B, 1)), backend.empty_cache(B))
    out = [logits]
    for t in range(steps):  # the mask covers what the cache holds (a streaming cache: S + W at most)
        logits, cache = backend.forward(ids[:, prompt + t:prompt + t + 1], np.ones((B, cache.length + 1), np.int64),
                                        np.full((B, 1), prompt + t), cache)
        out.append(logits)
    return np.concatenate(out, axis=1)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_fp32_matches_onnxruntime_cpu_on_the_portable_graph(reference_fp32, kind):
    """The lowered fp32 graph on CUDA (the ops' torch references, on the GPU) against ONNX Runtime on the CPU
    running the portable graph it came from: prefill and 8 decode steps."""
    portable, lowered = reference_fp32[kind]
    ids = np.random.default_rng(0).integers(1, 8000, (2, 40))
    oracle = _decode_run(open_backend(portable, "onnxruntime"), ids, 32, 8)
    cuda = _decode_run(open_backend(lowered, "torch", device="cuda"), ids, 32, 8)
    np.testing.assert_allclose(cuda, oracle, atol=2e-3, rtol=0)  # float32; the GPU sums in other orders


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_kernels_follow_the_cpu_references_on_the_lowered_graph(reference_bf16, kind):
    """The same lowered bf16 graph: Triton plugin kernels on CUDA against the ops' torch references on the CPU,
    and decode replayed from CUDA graphs against eager CUDA, bit for bit (sparse: see below)."""
    _, lowered = reference_bf16[kind]
    ids = np.random.default_rng(0).integers(1, 8000, (2, 40))
    cpu = _decode_run(open_backend(lowered, "torch"), ids, 32, 8)
    eager = _decode_run(open_backend(lowered, "torch", device="cuda", cuda_graphs=False), ids, 32, 8)
    graphed = _decode_run(open_backend(lowered, "torch", device="cuda"), ids, 32, 8)
    scale = float(np.abs(cpu).max())
    if kind == "sparse":
        # SparseMLP adds in float32 atomics (no fixed order from run to run), and a top-k over bf16 scores flips on
        # a last-bit difference, which changes whole rows: most logits agree (the sparse ops alone: tests/plugins).
        assert (np.abs(graphed - eager) <= 3e-2 * scale).mean() > 0.98
        assert (np.abs(eager - cpu) <= 3e-2 * scale).mean() > 0.98
    else:
        np.testing.assert_array_equal(graphed, eager)
        np.testing.assert_allclose(eager, cpu, atol=3e-2 * scale, rtol=0)  # bf16 activations, other summation orders
    assert (eager.argmax(-1) == cpu.argmax(-1)).mean() > 0.9


@pytest.mark.gpu
def test_cuda_runs_the_lowered_w4a4_graph(tmp_path):
    """QuikQuantize/QuikMatMul kernels inside the lowered graph: graphed decode equals eager bit for bit; against
    the CPU references only loosely (a 4-bit code that flips on a last-bit difference changes later layers; the
    kernels' exactness against the references is tests/plugins/test_w4a4_gemm.py)."""
    from planforge.exporter.api import ExportOptions, export

    export(str(REFERENCE), tmp_path / "fp16", ExportOptions(dtype="fp16"))
    optimize(tmp_path / "fp16", tmp_path / "w4a4", OptimizeOptions(
        quant=QuantOptions("w4a4", outliers="0", clip_search=False), target="portable"))
    lowered = build(tmp_path / "w4a4", tmp_path / "lowered")
    ids = np.random.default_rng(0).integers(1, 8000, (2, 40))
    eager = _decode_run(open_backend(lowered, "torch", device="cuda", cuda_graphs=False), ids, 32, 8)
    graphed = _decode_run(open_backend(lowered, "torch", device="cuda"), ids, 32, 8)
    np.testing.assert_array_equal(graphed, eager)
    cpu = _decode_run(open_backend(lowered, "torch"), ids, 32, 8)
    assert np.isfinite(eager).all() and (eager.argmax(-1) == cpu.argmax(-1)).mean() > 0.5
