"""Sample scripts run as documented (on the tiny test model, with small settings)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runtime_runs_and_checks_tokens(tiny_model):
    source, _ = tiny_model("llama")
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / "bench_runtime.py"), str(source), "--repeats", "1",
                           "--new-tokens", "4", "--prompt-tokens", "12"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 1 ") or line.startswith("| 4 ")]
    assert len(table) == 2 and all(line.rstrip().endswith("| yes |") for line in table), proc.stdout
