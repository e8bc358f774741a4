"""The contextual-sparsity graph pass against the dense graph and the torch masked model, and its refusals.

References: the dense exported graph (sparsity so small that every unit is kept) and
``planforge.sparsity.masking.masked_logits`` (HF model with per-token head/neuron masks zeroed by hooks).
"""

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from planforge.errors import InvalidSparsityError, PredictorError, PredictorMismatchError, PredictorNotFoundError
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.contextual_sparsity import SparsityOptions, top_k
from planforge.graph_passes.schemes import QuantizationError, QuantOptions
from planforge.manifest import Manifest
from planforge.runtime import open_backend
from planforge.sparsity.masking import layer0_attention_output, masked_logits, predicted_masks

from sparsity_support import make_predictor, run_steps

ATOL_DENSE = 1e-5
ATOL_REF = 1e-4
KEEP_ALL = 0.001  # k = n for every layer width here: the whole machinery runs, nothing is skipped


def oracle_predictor(dims, path, head_scores, neuron_scores):
    """Scores independent of the input: relu(0·z + 1) = 1, so scores = fc2.weight @ 1 + fc2.bias = the given ones."""
    predictor = make_predictor(dims, path, hidden=1)
    t = predictor.tensors
    for part, scores in (("heads", head_scores), ("neurons", neuron_scores)):
        t[f"{part}.fc1.weight"][:] = 0
        t[f"{part}.fc1.bias"][:] = 1
        t[f"{part}.fc2.weight"][:] = 0
        t[f"{part}.fc2.bias"][:] = scores.reshape(-1)
    predictor.save(path)
    return predictor


def sparsify(exported, out, predictor_path, heads, mlp, quant=None, target="portable"):
    optimize(exported, out, OptimizeOptions(sparsity=SparsityOptions(heads, mlp, predictor_path), quant=quant,
                                            target=target, force=True))
    return out


def assert_clear_cut(hf, predictor, ids, heads, mlp, rel_margin=1e-5):
    """The k-th and (k+1)-th scores differ by far more than fp32 rounding (~1e-7 relative), so ONNX Runtime
    and torch select the same units."""
    x = layer0_attention_output(hf, torch.from_numpy(ids)).reshape(-1, predictor.header.hidden_size)
    for scores, sparsity, first in zip(predictor.scores_torch(x), (heads, mlp), (1, 0)):
        s = scores[:, first:].sort(dim=-1, descending=True).values
        k = top_k(s.shape[-1], sparsity)
        if k < s.shape[-1]:
            assert (s[..., k - 1] - s[..., k]).min() > rel_margin * (1 + s.abs().max())


@pytest.fixture(scope="module")
def llama(tiny_model, hf_model, tmp_path_factory):
    source, exported = tiny_model("llama")  # 4 q heads, 2 kv heads (GQA), 2 layers
    root = tmp_path_factory.mktemp("sparse_llama")
    dims = Manifest.load(exported).dims
    predictor = make_predictor(dims, root / "predictor.safetensors")
    return dict(source=source, exported=exported, root=root, dims=dims, hf=hf_model(source), predictor=predictor,
                path=root / "predictor.safetensors")


def test_keep_all_equals_dense_graph_for_a_model_with_layers_without_positions(tiny_model, tmp_path):
    """SmolLM3's layer 1 attends without rotary (NoPE): the decode branch reproduces it when every unit is kept."""
    exported = tiny_model("smollm3")[1]
    make_predictor(Manifest.load(exported).dims, tmp_path / "p.safetensors")
    out = sparsify(exported, tmp_path / "keep_all", tmp_path / "p.safetensors", KEEP_ALL, KEEP_ALL)
    ids = np.random.default_rng(3).integers(1, 300, (2, 9))
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 5), run_steps(open_backend(exported), ids, 5),
                               atol=ATOL_DENSE, rtol=0)


def test_keep_all_equals_dense_graph_prefill_and_decode(llama):
    out = sparsify(llama["exported"], llama["root"] / "keep_all", llama["path"], KEEP_ALL, KEEP_ALL)
    model = onnx.load(str(out / "model.onnx"))
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    assert len(ifs) == 2  # layer 0 (MLP) and layer 1 (attention + MLP)
    then_ops = {n.op_type for n in ifs[1].attribute[0].g.node} | {n.op_type for n in ifs[1].attribute[1].g.node}
    assert {"GatherND", "Gather", "RotaryEmbedding", "Softmax", "Attention", "ScatterElements"} <= then_ops
    assert sum(n.op_type == "TopK" for n in model.graph.node) == 2
    manifest = Manifest.load(out)
    assert manifest.io == Manifest.load(llama["exported"]).io  # no I/O change
    ids = np.random.default_rng(3).integers(1, 300, (2, 9))
    dense = run_steps(open_backend(llama["exported"]), ids, 5)
    sparse = run_steps(open_backend(out), ids, 5)
    np.testing.assert_allclose(sparse, dense, atol=ATOL_DENSE, rtol=0)


@pytest.mark.parametrize("heads,mlp", [(0.5, 0.5), (0.5, 0.0), (0.0, 0.75)])
def test_step_by_step_decode_equals_masked_reference(llama, heads, mlp):
    """Prefill 4 tokens then decode 7, batch 2: each step's selection differs per row and per step."""
    out = sparsify(llama["exported"], llama["root"] / f"s_{heads}_{mlp}", llama["path"], heads, mlp)
    ids = np.random.default_rng(5).integers(1, 300, (2, 11))
    assert_clear_cut(llama["hf"], llama["predictor"], ids, heads, mlp)
    head_mask, neuron_mask = predicted_masks(llama["hf"], llama["predictor"], torch.from_numpy(ids), heads, mlp)
    if heads:
        assert not head_mask[1].all() and (head_mask[1, :, 1:] != head_mask[1, :, :-1]).any()  # changes per step
        assert (head_mask[1, 0] != head_mask[1, 1]).any()  # and per batch row
    if mlp:
        assert (neuron_mask[:, :, 1:] != neuron_mask[:, :, :-1]).any()
    reference = masked_logits(llama["hf"], torch.from_numpy(ids), head_mask, neuron_mask).numpy()
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 4), reference, atol=ATOL_REF, rtol=0)
    entry = Manifest.load(out).passes[-1]
    assert entry["name"] == "contextual_sparsity" and entry["matches"] == (2 if mlp else 1)  # layer 0: MLP only
    assert entry["settings"]["heads"] == heads and entry["settings"]["mlp"] == mlp


def test_oracle_selection_equals_masked_reference(llama, tmp_path):
    """A predictor whose scores are a chosen pattern: the graph keeps exactly the top-k of that pattern."""
    d = llama["dims"]
    rng = np.random.default_rng(5)
    head_scores = rng.permutation(d.num_layers * d.num_heads).astype(np.float32).reshape(d.num_layers, d.num_heads)
    neuron_scores = rng.permutation(d.num_layers * d.intermediate_size).astype(np.float32).reshape(d.num_layers, -1)
    oracle_predictor(d, tmp_path / "oracle.safetensors", head_scores, neuron_scores)
    out = sparsify(llama["exported"], tmp_path / "oracle", tmp_path / "oracle.safetensors", 0.5, 0.25)
    ids = rng.integers(1, 300, (1, 8))
    kh, kn = top_k(d.num_heads, 0.5), top_k(d.intermediate_size, 0.25)
    head_mask = torch.zeros(d.num_layers, 1, 8, d.num_heads, dtype=torch.bool)
    neuron_mask = torch.zeros(d.num_layers, 1, 8, d.intermediate_size, dtype=torch.bool)
    for layer in range(d.num_layers):
        head_mask[layer, ..., np.argsort(-head_scores[layer])[:kh]] = True
        neuron_mask[layer, ..., np.argsort(-neuron_scores[layer])[:kn]] = True
    head_mask[0] = True  # layer 0's heads are always dense
    reference = masked_logits(llama["hf"], torch.from_numpy(ids), head_mask, neuron_mask).numpy()
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 3), reference, atol=ATOL_REF, rtol=0)


@pytest.mark.parametrize("family,seed,length", [("qwen2", 6, 8), ("mistral", 6, 13)])
def test_biases_mqa_and_sliding_window(tiny_model, hf_model, tmp_path, family, seed, length):
    """Qwen2: q/k/v biases, one kv head for 4 q heads. Mistral: a sliding window of 8 (13 tokens cross it)."""
    source, exported = tiny_model(family)
    dims = Manifest.load(exported).dims
    assert family != "qwen2" or dims.num_kv_heads == 1
    predictor = make_predictor(dims, tmp_path / "p.safetensors", seed=1)
    out = sparsify(exported, tmp_path / "sparse", tmp_path / "p.safetensors", 0.5, 0.5)
    ids = np.random.default_rng(seed).integers(1, 300, (2, length))
    hf = hf_model(source)
    assert_clear_cut(hf, predictor, ids, 0.5, 0.5)
    masks = predicted_masks(hf, predictor, torch.from_numpy(ids), 0.5, 0.5)
    reference = masked_logits(hf, torch.from_numpy(ids), *masks).numpy()
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 3), reference, atol=ATOL_REF, rtol=0)


def test_w4a4_in_the_same_call_sparsity_first(llama, tmp_path):
    """Sparsity, then W4A4 on what stays MatMul(x, W): with every unit kept, prefill equals the W4A4-only model."""
    quant = QuantOptions(scheme="w4a4", outliers="0")
    both = sparsify(llama["exported"], tmp_path / "both", llama["path"], KEEP_ALL, KEEP_ALL, quant=quant)
    only = tmp_path / "w4a4"
    optimize(llama["exported"], only, OptimizeOptions(quant=quant, target="portable"))
    names = [p["name"] for p in Manifest.load(both).passes]
    assert names == ["contextual_sparsity", "quantize_linears"]
    assert Manifest.load(both).passes[1]["matches"] == 14  # 2 layers x 7 linears: K/V outside, the rest in If
    ids = np.random.default_rng(7).integers(1, 300, (2, 6))
    a, b = open_backend(only), open_backend(both)
    mask, pos = np.ones((2, 6), np.int64), np.tile(np.arange(6), (2, 1))
    np.testing.assert_allclose(b.forward(ids, mask, pos, b.empty_cache(2))[0],
                               a.forward(ids, mask, pos, a.empty_cache(2))[0], atol=ATOL_DENSE, rtol=0)
    from planforge.graph_passes.flops import decode_macs

    assert decode_macs(only, 8).parts == decode_macs(llama["exported"], 8).parts  # quantized weights still count
    decode = run_steps(b, ids, 4)  # the decode branch: quantized K/V, float gathered slices
    assert np.isfinite(decode).all()
    model = onnx.load(str(both / "model.onnx"))
    assert not any(t.name == "model.layers.0.mlp.up_proj.weight" for t in model.graph.initializer)  # replaced
    # The other order is refused: sparsity needs the float export.
    with pytest.raises(InvalidSparsityError, match="already optimized"):
        sparsify(only, tmp_path / "x", llama["path"], 0.5, 0.5)
    with pytest.raises(QuantizationError, match="already has contextual sparsity"):
        optimize(sparsify(llama["exported"], tmp_path / "s", llama["path"], 0.5, 0.5), tmp_path / "y",
                 OptimizeOptions(quant=quant))


@pytest.mark.parametrize("heads,mlp,error,match", [
    (1.0, 0.5, InvalidSparsityError, r"\[0, 1\)"),
    (-0.1, 0.5, InvalidSparsityError, r"\[0, 1\)"),
    (0.0, 0.0, InvalidSparsityError, "without a sparsity"),
])
def test_bad_sparsity(llama, tmp_path, heads, mlp, error, match):
    with pytest.raises(error, match=match):
        sparsify(llama["exported"], tmp_path / "out", llama["path"], heads, mlp)
    assert not (tmp_path / "out").exists()


def test_bad_predictors(llama, tmp_path):
    d = llama["dims"]
    with pytest.raises(PredictorNotFoundError, match="does not exist"):
        sparsify(llama["exported"], tmp_path / "out", tmp_path / "missing.safetensors", 0.5, 0.5)
    with pytest.raises(InvalidSparsityError, match="--predictor"):
        optimize(llama["exported"], tmp_path / "out", OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, None)))
    make_predictor(d, tmp_path / "other.safetensors", intermediate_size=d.intermediate_size * 2)
    with pytest.raises(PredictorMismatchError, match="intermediate_size 256 vs the model's 128"):
        sparsify(llama["exported"], tmp_path / "out", tmp_path / "other.safetensors", 0.5, 0.5)
    make_predictor(d, tmp_path / "per_layer.safetensors", kind="per_layer")
    with pytest.raises(PredictorError, match="single"):
        sparsify(llama["exported"], tmp_path / "out", tmp_path / "per_layer.safetensors", 0.5, 0.5)
    assert not (tmp_path / "out").exists()


def test_cli_records_settings_and_reports_errors(llama, tmp_path):
    def planforge(*args):
        return subprocess.run([sys.executable, "-m", "planforge.cli.app", *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    out = tmp_path / "cli"
    proc = planforge("optimize", llama["exported"], "-o", out, "--quant", "none", "--sparsity-heads", 0.5,
                     "--sparsity-mlp", 0.5, "--predictor", llama["path"], "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "contextual_sparsity: 2 rewritten" in proc.stdout
    entry = json.loads((out / "planforge.json").read_text())["passes"][0]
    assert entry["settings"]["predictor"] == str(llama["path"]) and entry["settings"]["kind"] == "single"
    proc = planforge("optimize", llama["exported"], "-o", tmp_path / "bad", "--quant", "none", "--sparsity-mlp", 1.5,
                     "--predictor", llama["path"])
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "[0, 1)" in proc.stderr
    proc = planforge("optimize", llama["exported"], "-o", tmp_path / "bad", "--quant", "none", "--sparsity-mlp", 0.5)
    assert proc.returncode == 2 and "--predictor" in proc.stderr


@pytest.mark.parametrize("context", [1, 10])
def test_decode_macs_match_a_hand_count(llama, context):
    from planforge.graph_passes.flops import decode_macs

    d, hidden = llama["dims"], 16
    L, H, Hkv, hd, F, V, D = (d.num_layers, d.num_heads, d.num_kv_heads, d.head_dim, d.intermediate_size,
                              d.vocab_size, d.hidden_size)
    dense = decode_macs(llama["exported"], context)
    assert dense.parts == {"linear": L * (D * (H + 2 * Hkv) * hd + H * hd * D + 3 * D * F),
                           "attention": L * 2 * H * context * hd, "predictor": 0, "lm_head": D * V}
    out = sparsify(llama["exported"], llama["root"] / "macs", llama["path"], 0.5, 0.75)
    kh, kn = top_k(H, 0.5), top_k(F, 0.75)
    sparse = decode_macs(out, context)  # the decode branch: layer 0 attention dense, K/V dense everywhere
    assert sparse.parts == {
        "linear": (D * (H + 2 * Hkv) * hd + H * hd * D) + (L - 1) * (2 * kh * hd * D + D * 2 * Hkv * hd)
        + L * 3 * D * kn,
        "attention": 2 * H * context * hd + (L - 1) * 2 * kh * context * hd,
        "predictor": D * hidden + hidden * (L - 1) * H + D * hidden + hidden * L * F, "lm_head": D * V}
    assert sparse.total == sum(sparse.parts.values()) and sparse.blocks == sparse.total - D * V


def test_bench_sparsity_sample_runs(llama):
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "samples" / "bench_sparsity.py"
    proc = subprocess.run([sys.executable, str(script), str(llama["source"]), "--predictor", str(llama["path"]),
                           "--repeats", "1", "--new-tokens", "3", "--prompt-tokens", "5", "--w4a4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| sparse 0.5/0.5 + W4A4 |" in proc.stdout and "| whole graph vs first |" in proc.stdout
    assert "machine:" in proc.stdout and "RANDOM" not in proc.stdout
    diffs = re.search(r"prefill (\S+), decode (\S+)$", proc.stdout.strip()).groups()
    assert max(map(float, diffs)) < ATOL_REF


def test_streaming_is_refused_with_sparsity(llama, tmp_path):
    from planforge.graph_passes.streaming_attention import StreamingConfigError, StreamingOptions

    with pytest.raises(InvalidSparsityError, match="cannot be combined"):
        optimize(llama["exported"], tmp_path / "both", OptimizeOptions(
            sparsity=SparsityOptions(0.5, 0.5, llama["path"]), streaming=StreamingOptions(4, 60)))
    sparse = sparsify(llama["exported"], tmp_path / "sparse", llama["path"], 0.5, 0.5)
    with pytest.raises(StreamingConfigError, match="contextual sparsity"):
        optimize(sparse, tmp_path / "then_streaming", OptimizeOptions(streaming=StreamingOptions(4, 60)))


def test_fp16_keep_all_matches_dense_fp16(tiny_model, llama, tmp_path):
    """fp16: masks and the decode branch in the model dtype (tolerance: fp16 rounding of differently fused graphs)."""
    exported = tiny_model("llama", "fp16")[1]
    out = sparsify(exported, tmp_path / "fp16", llama["path"], KEEP_ALL, KEEP_ALL)
    ids = np.random.default_rng(8).integers(1, 300, (2, 7))
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 4), run_steps(open_backend(exported), ids, 4), atol=2e-2, rtol=0)


def test_gpt2_learned_positions_and_plain_mlp_keep_all(tiny_model, tmp_path):
    """GPT-2: no RoPE, biases everywhere, a non-gated GELU MLP, MHA; keep-everything equals the dense graph."""
    exported = tiny_model("gpt2")[1]
    make_predictor(Manifest.load(exported).dims, tmp_path / "p.safetensors")
    out = sparsify(exported, tmp_path / "gpt2", tmp_path / "p.safetensors", KEEP_ALL, KEEP_ALL)
    ids = np.random.default_rng(9).integers(1, 300, (2, 7))
    np.testing.assert_allclose(run_steps(open_backend(out), ids, 4), run_steps(open_backend(exported), ids, 4),
                               atol=ATOL_DENSE, rtol=0)


def test_left_padded_batch_equals_rows_alone(llama):
    """A row's selection depends only on its own tokens: a left-padded batch decodes each row as if alone."""
    from planforge.runtime.backends import positions_from_mask

    session = open_backend(sparsify(llama["exported"], llama["root"] / "pad", llama["path"], 0.5, 0.5))
    rng = np.random.default_rng(10)
    rows = [rng.integers(1, 300, 6), rng.integers(1, 300, 3)]
    steps = rng.integers(1, 300, (2, 4))
    width = 6
    ids = np.stack([np.concatenate([np.zeros(width - len(r), np.int64), r]) for r in rows])
    mask = np.stack([np.concatenate([np.zeros(width - len(r), np.int64), np.ones(len(r), np.int64)]) for r in rows])
    logits, cache = session.forward(ids, mask, positions_from_mask(mask), session.empty_cache(2))
    batch = [logits[:, -1]]
    for t in range(steps.shape[1]):
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        step, cache = session.forward(steps[:, t:t + 1], mask, positions_from_mask(mask)[:, -1:], cache)
        batch.append(step[:, -1])
    for b, row in enumerate(rows):
        alone = run_steps(session, np.concatenate([row, steps[b]])[None], len(row))[0, len(row) - 1:]
        np.testing.assert_allclose(np.stack([x[b] for x in batch]), alone, atol=ATOL_REF, rtol=0)  # other shapes, sums


@pytest.mark.parametrize("family, why", [
    ("qwen3", r"Q is normalized per head before rotary \(q_norm, as in Qwen3\)"),
    ("granite", r"the residual branches are scaled \(residual_multiplier, as in Granite\)"),
    ("gemma2", r"Attention with attributes \['softcap'\]"),
    ("gemma3", r"Q is normalized per head before rotary"),
])
def test_a_family_the_decode_branch_cannot_reproduce_is_refused(tiny_model, tmp_path, family, why):
    """A dense output would silently ignore --sparsity."""
    exported = tiny_model(family)[1]
    make_predictor(Manifest.load(exported).dims, tmp_path / "p.safetensors")
    with pytest.raises(InvalidSparsityError, match=r"cannot be applied to this model: .*" + why):
        sparsify(exported, tmp_path / "out", tmp_path / "p.safetensors", 0.5, 0.5)
    assert not (tmp_path / "out").exists()
