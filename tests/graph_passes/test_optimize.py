"""`planforge optimize` end to end on the tiny Llama, its manifest record, and every refusal."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.calibration import calibrate, calibration_samples
from planforge.graph_passes.schemes import QuantizationError, QuantOptions, format_for, parse_count
from planforge.manifest import Manifest

CALIB_SEQ = 32


def planforge(*args):
    return subprocess.run([sys.executable, "-m", "planforge.cli.app", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory):
    from support import CORPUS

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def w4a4(tiny_model, calib_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("w4a4") / "model"
    proc = planforge("optimize", tiny_model("llama")[1], "-o", out, "--quant", "w4a4", "--outliers", "8",
                     "--weight-method", "gptq", "--calib", calib_text, "--calib-samples", 4,
                     "--calib-seq-len", CALIB_SEQ, "--target", "portable", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_optimize_writes_quantized_model_and_records_the_pass(tiny_model, w4a4):
    source = tiny_model("llama")[1]
    out, proc = w4a4
    assert "quantize_linears: 14 rewritten" in proc.stdout  # 2 layers x 7 linears
    assert "quantize_embedding" not in proc.stdout  # the tiny Llama's table is untied: auto keeps it float
    manifest = Manifest.load(out)
    (entry,) = manifest.passes
    assert entry["name"] == "quantize_linears" and entry["matches"] == 14
    assert entry["settings"]["scheme"] == "w4a4" and entry["settings"]["weight_method"] == "gptq"
    assert entry["settings"]["outliers"] == "8" and entry["settings"]["int8_layers"] == ["down_proj"]
    assert entry["settings"]["calibration"]["samples"] == 4 and entry["settings"]["calibration"]["seq_len"] == CALIB_SEQ
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    model = onnx.load(str(out / "model.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["model.layers.0.self_attn.q_proj/quant.weight_q"] == onnx.TensorProto.INT4
    assert types["model.layers.0.mlp.down_proj/quant.weight_q"] == onnx.TensorProto.INT8
    assert "model.layers.0.self_attn.q_proj.weight" not in types  # the float weight is gone
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 14 and "ReduceMin" in ops and "MatMul" in ops


def test_compare_reports_the_degradation(tiny_model, w4a4):
    proc = planforge("compare", tiny_model("llama")[1], w4a4[0], "--decode-steps", 2, "--atol", "10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "top-1 agree" in proc.stdout and "decode_2" in proc.stdout and "PASSED" in proc.stdout


def test_calibration_matches_transformers_hooks(tiny_model, hf_model, calib_text):
    import torch

    source, exported = tiny_model("llama")
    manifest = Manifest.load(exported)
    from planforge.tokenizer import Tokenizer

    samples = calibration_samples(Tokenizer(exported).encode(calib_text.read_text()), CALIB_SEQ, 2)
    stats = calibrate(exported, manifest, samples, hessians=True)
    model, seen = hf_model(source), {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0]))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for ids in samples:
            model(torch.from_numpy(ids)[None])
    for h in hooks:
        h.remove()
    for lin in manifest.linears:
        x = torch.cat(seen[lin["module"]]).reshape(-1, lin["in_features"]).double().numpy()
        np.testing.assert_allclose(stats[lin["weight"]].absmax, np.abs(x).max(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[lin["weight"]].hessian, x.T @ x, rtol=1e-4, atol=1e-4)
        assert stats[lin["weight"]].tokens == 2 * CALIB_SEQ


def test_outlier_counts():
    assert parse_count("16", 64) == 16 and parse_count("0.03", 512) == 15 and parse_count("0", 8) == 0
    assert format_for(QuantOptions("w4a4", outliers="0.03"), "q_proj", 512).outliers == 16  # Kq even
    assert format_for(QuantOptions("w4a4", int8_outliers="5"), "down_proj", 128).outliers == 5
    assert format_for(QuantOptions("w4a16"), "q_proj", 256).group == 128
    for bad in ("64", "1.5", "-1", "many"):
        with pytest.raises(QuantizationError):
            parse_count(bad, 64)


@pytest.mark.parametrize("case", ["scheme", "outliers", "short_calib", "already_quantized", "already_lowered",
                                  "no_weights", "no_calib", "group_w4a4", "group_48"])
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_model, w4a4, calib_text, tmp_path):
    source = tiny_model("llama")[1]
    args, message = {
        "scheme": (["--quant", "w3a3"], "w3a3"),
        "outliers": (["--outliers", "64", "--calib", calib_text], "leave nothing to quantize"),
        "short_calib": (["--calib", tmp_path / "short.txt", "--calib-seq-len", 64], "fewer than one sample"),
        "already_quantized": (["--quant", "w8a8"], "already quantized"),
        "already_lowered": (["--quant", "w8a8"], "already lowered for onnxruntime"),
        "no_weights": (["--weight-method", "gptq", "--calib", calib_text], "cannot be read"),
        "no_calib": (["--weight-method", "gptq"], "--calib"),
        "group_w4a4": (["--group", "32"], "--group sets the weight blocks of weight-only schemes"),
        "group_48": (["--quant", "w4a16", "--group", "48"], "a power of two from 16"),
    }[case]
    (tmp_path / "short.txt").write_text("The quick brown fox.")
    if case == "already_quantized":
        source = w4a4[0]
    if case == "already_lowered":
        source = tmp_path / "lowered"
        optimize(tiny_model("llama")[1], source, OptimizeOptions(quant=QuantOptions("w4a16")))
    if case == "no_weights":
        source = tmp_path / "external"
        shutil.copytree(tiny_model("llama")[1], source)
        model = onnx.load(str(source / "model.onnx"))
        onnx.save_model(model, str(source / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                        size_threshold=0)
        (source / "model.onnx.data").unlink()
    proc = planforge("optimize", source, "-o", tmp_path / "out", "--quiet", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_quant_none_copies_and_w4a16_needs_no_calibration(tiny_model, tmp_path):
    source = tiny_model("llama")[1]
    manifest, reports = optimize(source, tmp_path / "same", OptimizeOptions(quant=None, target="portable"))
    assert reports == [] and Manifest.load(tmp_path / "same").passes == []
    assert Manifest.load(tmp_path / "same").target == "portable"
    _, (report,) = optimize(source, tmp_path / "w4a16", OptimizeOptions(quant=QuantOptions("w4a16"), target="portable"))
    assert report.matches == 14
    assert json.loads((tmp_path / "w4a16" / "planforge.json").read_text())["passes"][0]["settings"]["scheme"] == "w4a16"
    # --group: the blocks of the portable DequantizeLinear and of the lowered MatMulNBits
    optimize(source, tmp_path / "g32", OptimizeOptions(quant=QuantOptions("w4a16", group=32), target="portable"))
    optimize(source, tmp_path / "g32_ort", OptimizeOptions(quant=QuantOptions("w4a16", group=32)))
    blocks = {n.op_type: onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "block_size"))
              for d in ("g32", "g32_ort") for n in onnx.load(str(tmp_path / d / "model.onnx")).graph.node
              if n.op_type in ("DequantizeLinear", "MatMulNBits")}
    assert blocks == {"DequantizeLinear": 32, "MatMulNBits": 32}
    assert Manifest.load(tmp_path / "g32").passes[0]["settings"]["group"] == 32


def test_every_optimize_option_has_help():
    import typer.main

    from planforge.cli.app import app

    command = typer.main.get_command(app).commands["optimize"]
    assert command.help and all(getattr(p, "help", None) for p in command.params)
