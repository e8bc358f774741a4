"""samples/quantization_results.py (the docs/quantization.md table) runs as documented, on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_script_prints_the_table(tiny_model, tmp_path):
    from support import CORPUS

    (tmp_path / "text.txt").write_text(CORPUS)
    items = [{"context": "The quick brown fox jumps over the", "choices": [" lazy dog", " key value"], "label": 0}] * 2
    (tmp_path / "acc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "quantization_results.py"), "--model",
                           str(tiny_model("llama")[0]), "--text", str(tmp_path / "text.txt"), "--accuracy",
                           str(tmp_path / "acc.jsonl"), "--rows", "2", "--max-tokens", "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | embedding | perplexity (")
    labels = [line.split(" | ")[0][2:] for line in table[1:]]
    assert labels == ["FP32", "FP16", "W8A8 RTN", "W4A16 g128 RTN"]
    assert [line.split(" | ")[1] for line in table[1:]] == ["FP32", "FP16", "FP16", "FP16"]  # untied table: auto keeps it
    w4a16_linears = float(table[4].split(" | ")[-1].rstrip(" |x"))
    assert 0.25 < w4a16_linears < 0.3  # 4 bits + one fp32 scale per 128 weights, of 16-bit weights
    assert table[2].split(" | ")[3] == "+0.0%" and table[2].endswith(" | 1.000x | 1.000x |")  # FP16 is the baseline
