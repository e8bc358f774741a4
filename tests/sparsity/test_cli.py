"""planforge sparsity importance / train-predictor end to end on a tiny random model, and their errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main

from planforge.cli.app import app
from planforge.sparsity.importance import load_importance
from planforge.sparsity.predictor import Predictor

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def planforge(*args):
    return subprocess.run([sys.executable, "-m", "planforge.cli.app", "sparsity", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from support import CORPUS, save_random_model

    root = tmp_path_factory.mktemp("sparsity_cli")
    save_random_model("llama", root / "hf")
    (root / "calib.txt").write_text(CORPUS)
    return root


def test_every_sparsity_option_has_help_and_is_documented():
    group = typer.main.get_command(app).commands["sparsity"]
    doc = DOC.read_text()
    for name, command in group.commands.items():
        assert command.help and f"### `planforge sparsity {name}`" in doc
        for param in command.params:
            assert getattr(param, "help", None), f"{name}: {param.name} has no help"
            for opt in param.opts:
                if opt.startswith("-"):
                    assert f"`{opt}`" in doc, f"docs/cli.md does not document planforge sparsity {name} {opt}"


def test_importance_then_train_end_to_end(tiny, hf_model):
    imp, pred = tiny / "imp.safetensors", tiny / "pred.safetensors"
    proc = planforge("importance", tiny / "hf", "--calib", tiny / "calib.txt", "-o", imp, "--samples", "6",
                     "--seq-len", "32", "-q")
    assert proc.returncode == 0, proc.stderr
    importance = load_importance(imp)
    assert importance.header.windows == 6 and importance.tensors["heads"].shape == (6 * 31, 2, 4)
    assert importance.tensors["neurons"].shape == (6 * 31, 2, 128)
    assert (importance.tensors["heads"] >= 0).all() and importance.tensors["heads"].max() > 0

    proc = planforge("train-predictor", imp, "-o", pred, "--epochs", "3", "--head-hidden", "8",
                     "--neuron-hidden", "16", "--holdout", "0.34", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "held-out Spearman" in proc.stdout
    predictor = Predictor.load(pred)
    h = predictor.header
    assert (h.kind, h.criterion, h.num_layers, h.num_heads, h.num_kv_heads, h.hidden_size, h.intermediate_size,
            h.head_hidden, h.neuron_hidden) == ("single", "plainact", 2, 4, 2, 64, 128, 8, 16)
    # the stored input normalization is the mean/std of the training tokens' layer-0 attention outputs
    train = importance.tensors["window"] < 4
    np.testing.assert_allclose(predictor.tensors["input_mean"],
                               importance.tensors["layer0_attention_output"][train].mean(0), rtol=1e-5, atol=1e-6)
    # the CLI's importance equals the library run on the model loaded independently
    from transformers import AutoTokenizer

    from planforge.sparsity.importance import window_importance

    ids = AutoTokenizer.from_pretrained(tiny / "hf").encode((tiny / "calib.txt").read_text(), add_special_tokens=False)
    again = window_importance(hf_model(tiny / "hf"), torch.tensor([ids[:32]]), "plainact")
    np.testing.assert_allclose(importance.tensors["heads"][:31], again["heads"].numpy(), rtol=1e-4, atol=1e-6)

    proc = planforge("train-predictor", imp, "-o", tiny / "pl.safetensors", "--kind", "per_layer", "--epochs", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert Predictor.load(tiny / "pl.safetensors").header.kind == "per_layer"


@pytest.mark.parametrize("args,message", [
    (["importance", "{hf}", "--calib", "{root}/missing.txt", "-o", "{root}/x.safetensors"], "does not exist"),
    (["importance", "{hf}", "--calib", "{root}/empty.txt", "-o", "{root}/x.safetensors"], "is empty"),
    (["importance", "{hf}", "--calib", "{root}/calib.txt", "-o", "{root}/x.safetensors", "--criterion", "magic"],
     "unknown criterion"),
    (["importance", "{hf}", "--calib", "{root}/calib.txt", "-o", "{root}/x.safetensors", "--seq-len", "100000"],
     "exceeds the model's context"),
    (["importance", "{root}/nomodel", "--calib", "{root}/calib.txt", "-o", "{root}/x.safetensors"], "does not exist"),
    (["train-predictor", "{root}/calib.txt", "-o", "{root}/p.safetensors"], "not an importance file"),
    (["train-predictor", "{root}/imp.safetensors", "-o", "{root}/p.safetensors", "--kind", "huge"], "unknown predictor kind"),
    (["train-predictor", "{root}/imp.safetensors", "-o", "{root}/calib.txt"], "already exists"),
])
def test_errors_are_one_line(tiny, args, message):
    (tiny / "empty.txt").write_text("")
    proc = planforge(*[a.format(hf=tiny / "hf", root=tiny) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
