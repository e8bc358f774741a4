"""The streaming options of `optimize`, `run --stream` and `eval --stream`, end to end on the tiny Llama."""

import json
import subprocess
import sys

import pytest

from support import CORPUS


def planforge(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "planforge.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=300, input=stdin)


@pytest.fixture(scope="module")
def streamed(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_stream") / "model"
    proc = planforge("optimize", tiny_model("llama")[1], "-o", out, "--streaming", "--window", 60, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "streaming_attention: 2 rewritten" in proc.stdout and "quantize" not in proc.stdout
    return out


@pytest.fixture(scope="module")
def long_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "long.txt"
    path.write_text(CORPUS * 2)  # well over the tiny model's 256 positions
    return path


def test_run_stream_takes_an_input_longer_than_max_seq_len(streamed, long_text):
    proc = planforge("run", streamed, "--stream", "--input", long_text, "--max-new-tokens", 300, "--greedy")
    assert proc.returncode == 0, proc.stderr
    assert "[streaming KV cache: 64 positions per layer (4 sinks + 60 window)" in proc.stderr
    assert "300 new tokens" in proc.stderr or "finish: stop" in proc.stderr
    stdin = planforge("run", streamed, "--stream", "--input", "-", "--max-new-tokens", 3, stdin="Sliding windows")
    assert stdin.returncode == 0, stdin.stderr


def test_eval_stream_scores_every_token_of_a_long_text(streamed, long_text):
    proc = planforge("eval", streamed, "--ppl", long_text, "--stream", "--max-tokens", 600, "--context", 200, "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["mode"] == "stream" and result["tokens"] == 599 and len(result["segment_ppl"]) == 3
    assert result["streaming"] == {"sink_tokens": 4, "window": 60, "cache_slots": 64}
    assert 1 < result["ppl"] < 1e4


@pytest.mark.parametrize("args, message", [
    (["--streaming", "--window", "0"], "--window must be >= 1"),
    (["--streaming", "--sink-tokens", "70", "--window", "60"], "not fewer than --window"),
    (["--window", "60"], "add --streaming"),
])
def test_optimize_refuses_bad_streaming_settings(tiny_model, tmp_path, args, message):
    proc = planforge("optimize", tiny_model("llama")[1], "-o", tmp_path / "out", *args, "--quiet")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_stream_needs_a_streaming_model(tiny_model, long_text):
    source, exported = tiny_model("llama")
    run = planforge("run", exported, "--stream", "--input", long_text)
    assert run.returncode == 2 and "optimize" in run.stderr and "--streaming" in run.stderr
    too_long = planforge("eval", exported, "--ppl", long_text, "--stream", "-q")
    assert too_long.returncode == 2 and "stream it through a model optimized with --streaming" in too_long.stderr
    hf = planforge("eval", source, "--ppl", long_text, "--stream", "-q")
    assert hf.returncode == 2 and "compiled model" in hf.stderr
    neither = planforge("run", exported)
    assert neither.returncode == 2 and "--prompt TEXT or --input FILE" in neither.stderr
