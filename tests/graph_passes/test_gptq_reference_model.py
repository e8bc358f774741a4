"""GPTQ against RTN on the shipped trained model's layers: held-out reconstruction error ||X W - X W_q||^2."""

from pathlib import Path

import numpy as np
import pytest
import torch

from planforge.graph_passes.quantize_linears import quantize_linear
from planforge.graph_passes.schemes import LinearFormat

REFERENCE = Path(__file__).resolve().parents[2] / "samples" / "reference_model"
# Width-512 layers: with 2048 calibration tokens (4x the width) GPTQ generalises; down_proj (1408 wide) needs
# far more tokens than a unit test affords (at 3072 its held-out error only ties RTN's while in-sample it is 3x lower).
MODULES = ("model.layers.2.self_attn.q_proj", "model.layers.4.self_attn.o_proj", "model.layers.7.mlp.up_proj")


@pytest.fixture(scope="module")
def layer_inputs():
    """Inputs of MODULES on 16 calibration windows (2048 tokens) and 4 held-out windows of 128 (torch hooks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(REFERENCE, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(REFERENCE)(REFERENCE.joinpath("heldout.txt").read_text()[:60000])["input_ids"]
    seen = {name: [] for name in MODULES}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: seen[name].append(args[0][0].double().numpy())) for name in MODULES]
    with torch.no_grad():
        for i in range(20):
            model(torch.tensor(ids[i * 128:(i + 1) * 128])[None])
    for h in hooks:
        h.remove()
    weights = {name: model.get_submodule(name).weight.detach().float().numpy().T.copy() for name in MODULES}  # [K, N]
    return {name: (np.concatenate(seen[name][:16]), np.concatenate(seen[name][16:]), weights[name]) for name in MODULES}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("outliers", [0, 16])
def test_gptq_reconstructs_trained_layers_better_than_rtn(layer_inputs, module, outliers):
    calib, held, w = layer_inputs[module]
    stats = type("S", (), {"absmax": np.abs(calib).max(0), "hessian": calib.T @ calib})
    fmt = LinearFormat(4, 4, None, outliers)
    err = lambda ql: float(((held @ (w - ql.dequantized())) ** 2).sum())  # noqa: E731
    gptq, rtn = (quantize_linear(w, fmt, stats, method) for method in ("gptq", "rtn"))
    assert np.array_equal(gptq.outliers, rtn.outliers) and len(gptq.outliers) == outliers
    assert err(gptq) < 0.85 * err(rtn), (err(gptq), err(rtn))
