"""compare_models: Polygraphy runners over prefill and teacher-forced decode steps."""

import numpy as np
import pytest

from planforge.compare.api import CompareOptions, build_feeds, compare_models
from planforge.compare.report import step_stats
from planforge.errors import ComparisonError, ModelNotFoundError


def test_compiled_matches_its_source_on_every_step(tiny_model):
    source, compiled = tiny_model("qwen2")
    report = compare_models(compiled, source, CompareOptions(decode_steps=5, atol=1e-4))
    assert report.passed, report.failures
    assert [s.output for s in report.steps] == ["prefill_logits"] + [f"decode_{k}_logits" for k in range(1, 6)]
    for s in report.steps:
        assert s.max_abs <= 1e-4 and s.top1 == 1.0 and s.cosine > 0.999999


def test_a_streaming_model_compares_past_its_window(tiny_model, tmp_path):
    """2 sinks + 6: the prefill and the decode steps run past the 8 cached positions (the mask covers what the
    cache holds); the lowered form on the torch backend against the portable one on ONNX Runtime."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.streaming_attention import StreamingOptions

    streamed, lowered = tmp_path / "stream", tmp_path / "lowered"
    optimize(tiny_model("llama")[1], streamed, OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
    optimize(streamed, lowered, OptimizeOptions(target="torch"))
    report = compare_models(lowered, streamed, CompareOptions(decode_steps=6, atol=1e-4,
                                                              prompts=("The quick brown fox jumps over",)))
    assert report.passed, report.failures
    assert report.steps[0].positions > 8  # the prompt alone overflows the cache


def test_different_models_fail_and_report_why(tiny_model):
    report = compare_models(tiny_model("llama")[1], tiny_model("mistral")[1],
                            CompareOptions(decode_steps=2, min_top1=0.99))
    assert not report.passed
    assert any("atol" in f for f in report.failures)
    assert any("top-1" in f for f in report.failures)


def test_prompt_is_the_prefill_and_decode_tokens_follow_it(tiny_model):
    source, compiled = tiny_model("llama")
    feeds = build_feeds(compiled, source, CompareOptions(decode_steps=3, prompts=("The quick brown fox",)))
    from planforge.runtime import Tokenizer

    ids = Tokenizer(compiled).encode("The quick brown fox")
    np.testing.assert_array_equal(feeds[0]["input_ids"][0, : len(ids)], ids)
    assert feeds[0]["input_ids"].shape[1] == len(ids) + 3  # the runners split off the last 3 as decode steps


def test_step_stats_by_hand():
    a = np.array([[[1.0, 2.0, 3.0]]])
    b = np.array([[[1.0, 2.5, 2.0]]])
    s = step_stats("x", [(a, b)])
    assert s.max_abs == pytest.approx(1.0) and s.mean_abs == pytest.approx(0.5)
    assert s.cosine == pytest.approx(np.dot([1, 2, 3], [1, 2.5, 2]) / np.sqrt(14 * 11.25))
    assert s.top1 == 0.0


def test_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(ModelNotFoundError):
        compare_models(tmp_path, tiny_model("llama")[1])
    with pytest.raises(ComparisonError, match="no prompts"):
        compare_models(tiny_model("llama")[1], tiny_model("llama")[0], CompareOptions(prompts=()))
