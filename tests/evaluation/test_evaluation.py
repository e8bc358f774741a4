"""Perplexity and accuracy against independent computations, on both kinds of model."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from planforge.evaluation.api import evaluate
from planforge.evaluation.perplexity import windows

TEXT = ("The quick brown fox jumps over the lazy dog. Attention with a key value cache makes decoding fast. "
        "Sliding windows bound the memory. planforge compiles decoder models to ONNX. ") * 12


def test_windows_by_hand():
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]  # disjoint: each window's first token unscored
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]  # every token after the first once


def test_perplexity_equals_transformers_loss_on_disjoint_windows(tiny_model, hf_model, tmp_path):
    source, compiled = tiny_model("llama")
    model = hf_model(source)
    from planforge.runtime import Tokenizer

    ids = np.array(Tokenizer(compiled).encode(TEXT), dtype=np.int64)
    context = 64
    nll_sum, count = 0.0, 0
    with torch.no_grad():  # independent reference: transformers' own shifted cross-entropy per chunk
        for begin in range(0, len(ids), context):
            chunk = torch.from_numpy(ids[begin:begin + context])[None]
            if chunk.shape[1] < 2:
                continue
            loss = model(input_ids=chunk, labels=chunk).loss.item()
            nll_sum += loss * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    expected = math.exp(nll_sum / count)
    (tmp_path / "text.txt").write_text(TEXT)
    for target in (source, compiled):
        result = evaluate(target, tmp_path / "text.txt", None, context=context)
        assert result["tokens"] == count
        assert result["ppl"] == pytest.approx(expected, rel=1e-4), target


def test_compiled_and_source_perplexity_agree_within_0_1_percent(tiny_model, tmp_path):
    source, compiled = tiny_model("gpt2")
    (tmp_path / "text.txt").write_text(TEXT)
    a = evaluate(source, tmp_path / "text.txt", None, context=64, stride=32)
    b = evaluate(compiled, tmp_path / "text.txt", None, context=64, stride=32)
    assert abs(a["ppl"] / b["ppl"] - 1) < 1e-3


def test_accuracy_picks_the_most_likely_choice(tiny_model, hf_model, tmp_path):
    source, compiled = tiny_model("llama")
    from planforge.runtime import Tokenizer

    tok = Tokenizer(compiled)
    model = hf_model(source)
    items = [{"context": "The quick brown fox", "choices": [" jumps over", " lazy dog", " decoding fast"], "label": 0},
             {"context": "Sliding windows", "choices": [" bound the memory", " quick brown"], "label": 1}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    expected = 0
    with torch.no_grad():
        for item in items:
            ctx = tok.encode(item["context"])
            scores = []
            for choice in item["choices"]:
                cont = tok.encode(choice, add_special_tokens=False)
                ids = torch.tensor([ctx + cont])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                scores.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
            expected += int(np.argmax(scores) == item["label"])
    result = evaluate(compiled, None, tmp_path / "set.jsonl")
    assert result["accuracy"] == expected / len(items) and result["accuracy_items"] == 2


def test_cli_prints_one_parseable_result_line(tiny_model, tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", "eval", str(tiny_model("llama")[1]),
                           "--ppl", str(tmp_path / "text.txt"), "--context", "64", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert json.loads(line[len("RESULT "):])["ppl"] > 1


def test_bad_accuracy_set(tiny_model, tmp_path):
    from planforge.evaluation.accuracy import AccuracySetError

    (tmp_path / "bad.jsonl").write_text('{"context": "x", "choices": ["a"], "label": 3}\n')
    with pytest.raises(AccuracySetError, match="line 1"):
        evaluate(tiny_model("llama")[1], None, tmp_path / "bad.jsonl")


def test_shared_prefix_scoring_equals_full_sequences(tiny_model):
    """The compiled scorer's KV-cache path (context once, choices batched) against whole-sequence scoring."""
    from planforge.evaluation.scorers import BackendScorer, _continuations_by_full_sequences

    scorer = BackendScorer(tiny_model("qwen2")[1])
    rng = np.random.default_rng(0)
    context = rng.integers(1, 300, 40)
    continuations = [rng.integers(1, 300, n) for n in (1, 3, 6)]
    fast = scorer.continuation_logprobs(context, continuations)
    slow = _continuations_by_full_sequences(scorer, context, continuations)
    np.testing.assert_allclose(fast, slow, atol=1e-4, rtol=0)


def test_transformers_shared_prefix_scoring_equals_full_sequences(tiny_model):
    from planforge.evaluation.scorers import TransformersScorer, _continuations_by_full_sequences

    scorer = TransformersScorer(tiny_model("llama")[0])
    rng = np.random.default_rng(1)
    context = rng.integers(1, 300, 30)
    continuations = [rng.integers(1, 300, n) for n in (2, 5, 1, 4)]
    np.testing.assert_allclose(scorer.continuation_logprobs(context, continuations),
                               _continuations_by_full_sequences(scorer, context, continuations), atol=1e-4, rtol=0)
