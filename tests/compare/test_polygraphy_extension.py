"""`polygraphy run` with planforge's runners (the polygraphy.run.plugins entry point), through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

from planforge.graph_passes.api import OptimizeOptions, optimize

POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")


def polygraphy_run(*args):
    return subprocess.run([POLYGRAPHY, "run", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_polygraphy_compares_the_lowered_graph_on_torch_with_onnxruntime(tiny_model, tmp_path):
    portable = tiny_model("llama")[1]
    lowered = tmp_path / "lowered"
    optimize(portable, lowered, OptimizeOptions(target="torch"))
    saved = tmp_path / "outputs.json"
    result = polygraphy_run(lowered / "model.onnx", "--pf-torch", "--pf-onnxrt", "--pf-decode-steps", 3,
                            "--val-range", "input_ids:[0,300]", "--atol", "1e-4", "--rtol", "0",
                            "--check-error-stat", "max", "--save-outputs", saved)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "planforge[lowered, torch-cpu] vs. planforge[onnx, onnxruntime-cpu]" in log
    assert "PASSED | Output: 'decode_3_logits'" in log
    runs = json.loads(saved.read_text())  # Polygraphy's own RunResults format
    assert "planforge[lowered, torch-cpu]" in json.dumps(runs)


def test_a_real_difference_fails_the_comparison(tiny_model, tmp_path):
    lowered = tmp_path / "lowered"
    optimize(tiny_model("llama")[1], lowered, OptimizeOptions(target="torch"))
    other = tiny_model("qwen2")[1]  # same vocabulary, other weights
    result = polygraphy_run(lowered / "model.onnx", "--pf-torch", "--pf-onnxrt", "--pf-reference", other,
                            "--val-range", "input_ids:[0,300]", "--atol", "1e-4", "--rtol", "0")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
