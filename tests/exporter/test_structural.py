"""The structural adapter: a family no adapter names exports when it fits the records by structure; a module or
config field that fits no record is refused naming it; and no export is written that does not reproduce its
source model's logits."""

import pytest
import torch

from planforge.errors import ExportMismatchError, UnsupportedArchitectureError
from planforge.exporter.api import export
from planforge.exporter.registry import _ADAPTERS
from planforge.manifest import Manifest


def test_a_llama_like_family_without_an_adapter_exports_by_structure(tiny_model):
    assert "SeedOssForCausalLM" not in _ADAPTERS  # tests/exporter/test_export_matches_transformers.py checks it
    manifest = Manifest.load(tiny_model("seed_oss")[1])
    assert manifest.family == "seed_oss" and manifest.architecture == "SeedOssForCausalLM"


def _save(tmp_path, config_name, arch, **overrides):
    import transformers

    cls = getattr(transformers, config_name, None)
    if cls is None:
        pytest.skip(f"this transformers has no {config_name}")
    config = cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
                 pad_token_id=0, **overrides)
    config.architectures = [arch]
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("config_name, arch, overrides, match", [
    ("ArceeConfig", "ArceeForCausalLM", {}, r"model\.layers\.0\.mlp\.gate_proj does not fit"),
    ("Olmo2Config", "Olmo2ForCausalLM", {}, r"model\.layers\.0\.input_layernorm is missing"),
    ("CohereConfig", "CohereForCausalLM", {}, r"model\.norm is a CohereLayerNorm, not an RMSNorm"),
    ("StableLmConfig", "StableLmForCausalLM", {}, r"partial_rotary_factor 0\.25"),
    ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {}, r"config field num_experts = \d+ changes the math"),
])
def test_what_fits_no_record_is_refused_naming_it(tmp_path, config_name, arch, overrides, match):
    source = _save(tmp_path, config_name, arch, **overrides)
    with pytest.raises(UnsupportedArchitectureError, match=rf"{arch} is not supported: no adapter names it, and it "
                                                           rf"does not fit the shared records by structure .*{match}"):
        export(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_structural_fit_whose_math_differs_is_never_written(tmp_path):
    """ERNIE 4.5 fits the records module for module, but its forward differs; the check against its logits
    refuses it."""
    source = _save(tmp_path, "Ernie4_5Config", "Ernie4_5ForCausalLM")
    with pytest.raises(ExportMismatchError, match=r"does not reproduce the source model: max \|Δ logits\| is .* of "
                                                  r"max \|logits\|.*Nothing was written"):
        export(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_planted_adapter_bug_is_caught_before_writing(tiny_model, tmp_path, monkeypatch):
    from dataclasses import replace

    from planforge.exporter.architectures.llama import LlamaAdapter

    style = LlamaAdapter.style
    monkeypatch.setattr(LlamaAdapter, "style", lambda self: replace(style(self), attention_scales=(1.0, 1.0)))
    with pytest.raises(ExportMismatchError, match="does not reproduce the source model"):
        export(str(tiny_model("llama")[0]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_per_layer_head_shapes_the_kv_contract_cannot_hold_are_refused(tiny_model, tmp_path, monkeypatch):
    from planforge.errors import UnsupportedConfigError
    from planforge.exporter.architectures.llama import LlamaAdapter

    weights = LlamaAdapter.weights

    def one_layer_with_fewer_kv_heads(self, model, dims):
        result = weights(self, model, dims)
        layer = result.layers[1]
        layer.k_proj.weight = layer.k_proj.weight[: dims.head_dim]  # 1 KV head in layer 1, 2 elsewhere
        return result

    monkeypatch.setattr(LlamaAdapter, "weights", one_layer_with_fewer_kv_heads)
    with pytest.raises(UnsupportedConfigError, match=r"layer 1 \(model\.layers\.1\.self_attn\): k_proj has 16 outputs "
                                                     r"where the model's 2 heads of 16 need 32"):
        export(str(tiny_model("llama")[0]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_config_value_transformers_rejects_is_named(tmp_path):
    import json

    source = _save(tmp_path, "LlamaConfig", "LlamaForCausalLM")
    config = json.loads((source / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "no-such-rope", "rope_theta": 10000.0}
    (source / "config.json").write_text(json.dumps(config))
    from planforge.errors import UnsupportedConfigError

    with pytest.raises(UnsupportedConfigError, match="transformers cannot build the model from .*config.json: "
                                                     "KeyError 'no-such-rope'"):
        export(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()
