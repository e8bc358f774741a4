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
