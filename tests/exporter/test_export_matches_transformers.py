"""Exported fp32 logits equal transformers' for prefill and 8 decode steps through the KV cache."""

import numpy as np
import onnx
import pytest
import torch

from planforge.exporter.api import export
from planforge.runtime import open_backend

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "granite", "smollm3", "gemma", "gemma2", "gemma3", "phi3", "opt", "opt350m", "seed_oss",
            "gpt2")
ATOL = 1e-4  # fp32 end to end; observed differences are ~1e-6


def _padded_batch(seed: int, length: int, pad: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :pad] = 0  # row 1 is left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_logits_match(family, tiny_model, hf_model):
    source, compiled = tiny_model(family)
    ids, mask, positions = _padded_batch(0, length=20, pad=5)  # 20 > Mistral's window of 8
    _steps_match(hf_model(source), open_backend(compiled), ids, mask, positions, decode_steps=8)


def _steps_match(model, session, ids, mask, positions, decode_steps: int) -> None:
    """A left-padded prefill, then ``decode_steps`` random tokens through both KV caches: logits within ATOL."""
    logits, cache = session.forward(ids.numpy(), mask.numpy(), positions.numpy(), session.empty_cache(2))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    real = mask.bool().numpy()  # padding rows are not compared: their outputs are never read
    np.testing.assert_allclose(logits[real], ref.logits.numpy()[real], atol=ATOL, rtol=0)

    past = ref.past_key_values
    g = torch.Generator().manual_seed(1)
    for step in range(decode_steps):
        token = torch.randint(1, 300, (2, 1), generator=g)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = session.forward(token.numpy(), mask.numpy(), positions.numpy(), cache)
        with torch.no_grad():
            ref = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=past,
                        use_cache=True)
        past = ref.past_key_values
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=ATOL, rtol=0, err_msg=f"decode step {step}")


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_is_canonical(family, tiny_model):
    _, compiled = tiny_model(family)
    model = onnx.load(compiled / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == 2  # one per layer
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attention.attribute}
    heads, kv_heads = {"qwen2": (4, 1), "gpt2": (4, 4), "opt": (4, 4), "opt350m": (4, 4)}.get(family, (4, 2))
    assert (attrs["q_num_heads"], attrs["kv_num_heads"]) == (heads, kv_heads)
    rotary, norm = (0, "LayerNormalization") if family in ("gpt2", "opt", "opt350m") else (4, "RMSNormalization")
    rotary = 2 if family == "smollm3" else rotary  # its layer 1 attends without positions
    assert ops.count("RotaryEmbedding") == rotary
    # q/k norms; the branch-output norms; opt350m's post-norm blocks have no final norm
    extra_norms = {"qwen3": 4, "gemma2": 4, "gemma3": 8, "opt350m": -1}.get(family, 0)
    assert ops.count(norm) == 5 + extra_norms  # two per layer and the final norm
    assert model.opset_import[0].version == 23
    inputs = [i.name for i in model.graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]


def test_mistral_window_is_smaller_than_the_sequence(tiny_model):
    """Guards the sliding-window test above: the window must really cut the context."""
    from planforge.runtime import Manifest

    manifest = Manifest.load(tiny_model("mistral")[1])
    assert manifest.sliding_windows == [8, 8]


def test_fp16_export_runs_and_tracks_fp32(tiny_model):
    source, compiled16 = tiny_model("llama", "fp16")
    _, compiled32 = tiny_model("llama")
    ids, mask, positions = _padded_batch(2, length=12, pad=0)
    s16, s32 = open_backend(compiled16), open_backend(compiled32)
    l16, _ = s16.forward(ids.numpy(), mask.numpy(), positions.numpy(), s16.empty_cache(2))
    l32, _ = s32.forward(ids.numpy(), mask.numpy(), positions.numpy(), s32.empty_cache(2))
    assert l16.dtype == np.float32  # logits are always fp32
    np.testing.assert_allclose(l16, l32, atol=2e-2, rtol=0)
    weights = {t.name: t for t in onnx.load(compiled16 / "model.onnx").graph.initializer}
    assert weights["model.layers.0.self_attn.q_proj.weight"].data_type == onnx.TensorProto.FLOAT16


def test_bf16_export_is_valid_onnx(tmp_path, tiny_model):
    from planforge.exporter.api import ExportOptions, export

    source, _ = tiny_model("llama")
    export(str(source), tmp_path / "bf16", ExportOptions(dtype="bf16"))
    model = onnx.load(tmp_path / "bf16" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    weights = {t.name: t for t in model.graph.initializer}
    assert weights["model.layers.0.mlp.down_proj.weight"].data_type == onnx.TensorProto.BFLOAT16


def test_qwen2_per_layer_sliding_window_matches_transformers(tmp_path, make_random_model):
    """Qwen2 windows only the layers its ``layer_types`` mark as sliding (here layer 1 of 2)."""
    from transformers import AutoModelForCausalLM

    from planforge.exporter.api import export
    from planforge.runtime import Manifest

    source = make_random_model("qwen2", tmp_path / "hf", use_sliding_window=True, sliding_window=6,
                               max_window_layers=1, layer_types=["full_attention", "sliding_attention"])
    export(str(source), tmp_path / "onnx")
    assert Manifest.load(tmp_path / "onnx").sliding_windows == [None, 6]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    session = open_backend(tmp_path / "onnx")
    ids, mask, positions = _padded_batch(4, length=16, pad=3)
    logits, _ = session.forward(ids.numpy(), mask.numpy(), positions.numpy(), session.empty_cache(2))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    real = mask.bool().numpy()
    np.testing.assert_allclose(logits[real], ref[real], atol=ATOL, rtol=0)


def test_external_data_export_loads_and_matches(tiny_model, tmp_path):
    from planforge.exporter.api import ExportOptions, export
    from planforge.runtime import Manifest

    source, inline = tiny_model("llama")
    export(str(source), tmp_path / "ext", ExportOptions(external_data="always"))
    assert (tmp_path / "ext" / "model.onnx.data").stat().st_size > (tmp_path / "ext" / "model.onnx").stat().st_size
    assert Manifest.load(tmp_path / "ext").external_data
    ids = np.arange(1, 11, dtype=np.int64)[None]
    np.testing.assert_array_equal(open_backend(tmp_path / "ext").prefill_logits(ids), open_backend(inline).prefill_logits(ids))


def test_gemma3_rotates_local_and_global_layers_with_their_own_bases(tiny_model):
    model = onnx.load(tiny_model("gemma3")[1] / "model.onnx")
    tables = {n.name: n.input[1] for n in model.graph.node if n.op_type == "RotaryEmbedding"}
    assert tables["model.layers.0.self_attn.q_proj/RotaryEmbedding"] == "rotary.sliding_attention.cos_cache"
    assert tables["model.layers.1.self_attn.q_proj/RotaryEmbedding"] == "rotary.cos_cache"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert not np.allclose(inits["rotary.sliding_attention.cos_cache"], inits["rotary.cos_cache"])


@pytest.mark.parametrize("prompt", [10, 20])  # decode crosses position 16; the prompt alone does
def test_phi3_longrope_switches_to_its_long_factors_as_the_model_does(tmp_path, make_random_model, hf_model, prompt):
    """longrope uses its long factors for a forward call whose largest position reaches
    original_max_position_embeddings (16 here), its short ones before; the graph makes the same switch per step."""
    half = 8  # head_dim 16
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
            "short_factor": [1.0 + 0.1 * i for i in range(half)], "long_factor": [2.0 + 0.5 * i for i in range(half)]}
    source = make_random_model("phi3", tmp_path / "hf", rope_parameters=rope, original_max_position_embeddings=16,
                               max_position_embeddings=64)
    export(str(source), tmp_path / "onnx")
    ids, mask, positions = _padded_batch(prompt, length=prompt, pad=3)
    _steps_match(hf_model(source), open_backend(tmp_path / "onnx"), ids, mask, positions, decode_steps=10)
