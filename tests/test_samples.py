"""Sample scripts run as documented (on the tiny test model, with small settings)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runtime_runs_and_checks_tokens(tiny_model):
    source, _ = tiny_model("llama")
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "bench_runtime.py"), str(source), "--repeats", "1",
                           "--new-tokens", "4", "--prompt-tokens", "12"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 1 ") or line.startswith("| 4 ")]
    assert len(table) == 2 and all(line.rstrip().endswith("| yes |") for line in table), proc.stdout


@pytest.fixture
def stream_text(tmp_path):
    from support import CORPUS

    path = tmp_path / "stream.txt"
    path.write_text(CORPUS * 3)
    return path


def test_streaming_results_prints_the_four_rows(tiny_model, stream_text):
    source, _ = tiny_model("llama")
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "streaming_results.py"), str(source), "--text",
                           str(stream_text), "--multiple", "2", "--stride", "128"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 4 and rows[0].endswith("| 1.000x |"), proc.stdout
    assert "stream: 512 scored tokens" in proc.stdout


def test_bench_streaming_keeps_the_streaming_cache_constant(tiny_model, stream_text):
    source, _ = tiny_model("llama")
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "bench_streaming.py"), str(source), "--text",
                           str(stream_text), "--multiples", "1", "2", "--decode", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| 1x") or line.startswith("| 2x")]
    streaming = [r for r in rows if "streaming" in r[3]]
    full = [r for r in rows if "full cache" in r[3]]
    assert [r[4].strip() for r in streaming] == ["256", "256"], proc.stdout
    assert [r[4].strip() for r in full] == ["258", "514"], proc.stdout


def test_sparsity_results_refuses_cuda_without_a_gpu():
    from support import cuda_available as _cuda_available

    if _cuda_available():
        pytest.skip("CUDA is available: --device cuda would start the full run")
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "sparsity_results.py"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # argparse's parser.error, before any model is loaded
    assert "--device cuda was requested but CUDA is not available" in proc.stderr, proc.stderr
    assert not proc.stdout, proc.stdout


def test_bench_gather_gemv_runs_and_checks_its_math():
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "bench_gather_gemv.py"), "--hidden", "64",
                           "--intermediate", "96", "--calls", "3", "--keep", "0.5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == ["dense", "gathered 50%"] and "| 48 |" in rows[2]


def test_bench_peers_builds_both_sides_and_prints_the_table(tiny_model, tmp_path):
    """samples/bench_peers.py end to end on the tiny Llama: ORT-GenAI's own builds, every planforge variant."""
    import shutil

    from support import CORPUS

    source = tmp_path / "hf"
    shutil.copytree(tiny_model("llama")[0], source)
    (source / "heldout.txt").write_text(CORPUS * 4)
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "bench_peers.py"), str(source), "--out",
                           str(tmp_path / "out"), "--rounds", "1", "--new-tokens", "4", "--prompt-tokens", "8",
                           "--batches", "1", "--ppl-tokens", "256"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r[0][2:] for r in rows[1:]]
    assert names == ["planforge fp32", "planforge fp32, ORT-GenAI client", "planforge fp32 optimized",
                     "planforge fp32 optimized, ORT-GenAI client", "planforge fp32 optimized, Python loop",
                     "planforge w4a16", "planforge w4a16 g32",
                     "planforge w4a16 g32, ORT-GenAI client", "planforge w8a8", "planforge w4a4", "ORT-GenAI fp32",
                     "ORT-GenAI int4"], proc.stdout
    # model | client | MB | prefill ms | decode tok/s b1 | b1 vs planforge fp32 | perplexity
    assert rows[1][5] == "1.00x" and all(float(r[6].strip(" |")) > 1 for r in rows[1:]
                                        if "client" not in r[0] and "Python loop" not in r[0])
    assert "same greedy tokens from planforge's runtime and ORT-GenAI's client: yes" in proc.stdout


def test_make_scaled_model_writes_a_model_the_exporter_reads_and_refuses_to_overwrite(tmp_path):
    import json

    out = tmp_path / "scaled"
    cmd = [sys.executable, str(ROOT / "samples" / "make_scaled_model.py"), str(out), "--hidden", "64",
           "--intermediate", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    reference = json.loads((ROOT / "samples" / "reference_model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (64, 2, 16)
    assert config["vocab_size"] == reference["vocab_size"] and (out / "heldout.txt").is_file()
    from planforge.exporter.api import ExportOptions, export

    export(str(out), tmp_path / "onnx", ExportOptions())  # a model the exporter takes as it takes the reference one
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr and not (tmp_path / "scaled.partial").exists()
