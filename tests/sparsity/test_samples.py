"""The reference-predictor and results sample scripts run end to end on a tiny random model."""

import json
import subprocess
import sys
from pathlib import Path

from planforge.sparsity.predictor import Predictor

ROOT = Path(__file__).resolve().parents[2]


def test_train_script_and_results_table(tmp_path):
    from support import CORPUS, save_random_model

    model = save_random_model("llama", tmp_path / "hf")
    (model / "heldout.txt").write_text(CORPUS * 4)
    items = [{"context": "The quick brown fox", "choices": [" jumps", " compiles models"], "label": 0},
             {"context": "Attention with a key value", "choices": [" cache", " dog", " window"], "label": 0}]
    (model / "accuracy.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,  # noqa: E731
                                       timeout=300)
    pred = tmp_path / "pred.safetensors"
    proc = run(ROOT / "samples" / "sparsity" / "train_reference_predictor.py", "--model", model, "-o", pred,
               "--samples", "4", "--seq-len", "32", "--epochs", "2", "--head-hidden", "8", "--neuron-hidden", "8")
    assert proc.returncode == 0, proc.stderr
    assert Predictor.load(pred).header.kind == "single" and "held-out Spearman" in proc.stdout

    proc = run(ROOT / "samples" / "sparsity_results.py", "--model", model, "--predictor", pred, "--ppl-tokens", "100",
               "--items", "2", "--samples", "4", "--seq-len", "32", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 + 9, proc.stdout  # header, dense, 3 targets x 3 sparsities
    dense = rows[1].split("|")[3:-1]
    assert len(dense) == 6 and len(set(c.strip() for c in dense[::2])) == 1  # one dense ppl in every column
