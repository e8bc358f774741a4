"""Guards the shipped reference model: its files, its quality band, and export fidelity on it."""

import hashlib
from pathlib import Path

import pytest

from planforge.evaluation.api import evaluate

MODEL = Path(__file__).resolve().parents[2] / "samples" / "reference_model"

# sha256 of the shipped files; change them only together with samples/reference_model/README.md.
CHECKSUMS = {
    "model.safetensors": "78d57952ce133e1aade2af2fdeebb0618c01dcef0183da99b4ee4ac888bee93a",
    "tokenizer.json": "79e37ef705bd08746f53c9e780bf8f2b711f5c5d7be1a3c7e2a153f0302b36bc",
    "heldout.txt": "1a399c8411cfb66b25f325ee449b36c4e0fe43928127f475d0de8b7da64e7343",
    "accuracy.jsonl": "bfd1630d4c0026c4dbfb97f5abb98fe18813f7238c5a05a2782a3c47cb8212c9",
    "config.json": "4a8f67c84e4d827eff1970931de54817637cd723439b333d200b976eceb70c38",
    "sparsity_predictor.safetensors": "0f37225a072bf4f3ee304662ea3bebdef286c856d3b3711cad9ec6e077b902d9",
}
# Perplexity on the first 4096 held-out tokens, window 256, stride 128, measured with
# `planforge eval samples/reference_model --ppl samples/reference_model/heldout.txt --max-tokens 4096 --stride 128`.
PPL_4096 = 8.8362


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_shipped_file_is_unchanged(name):
    assert hashlib.sha256((MODEL / name).read_bytes()).hexdigest() == CHECKSUMS[name], (
        f"{name} changed; if on purpose, update CHECKSUMS, PPL_4096 and the model's README together")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from planforge.exporter.api import export

    out = tmp_path_factory.mktemp("reference") / "fp32"
    export(str(MODEL), out)
    return out


def test_perplexity_band_and_onnx_matches_torch_within_0_1_percent(exported):
    kwargs = dict(max_tokens=4096, stride=128)
    torch_result = evaluate(MODEL, MODEL / "heldout.txt", None, **kwargs)
    onnx_result = evaluate(exported, MODEL / "heldout.txt", None, **kwargs)
    assert torch_result["ppl"] == pytest.approx(PPL_4096, rel=0.01)
    assert abs(onnx_result["ppl"] / torch_result["ppl"] - 1) < 1e-3
    assert torch_result["tokens"] == onnx_result["tokens"] == 4095


def test_trained_model_is_far_better_than_chance(exported):
    result = evaluate(exported, None, MODEL / "accuracy.jsonl")
    assert result["accuracy_items"] == 300
    assert result["accuracy"] > 0.6  # 4-way choice: chance is 0.25; measured 0.683
