"""The pass pipeline: subgraphs are rewritten, matches are counted, and a pass that matched nothing warns."""

import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from planforge.graph_passes.pipeline import Pipeline
from planforge.graph_passes.quantize_linears import QuantizeLinearsPass, quantize_linear
from planforge.graph_passes.schemes import QuantOptions, format_for

K, N = 32, 8
MODEL = """
<ir_version: 10, opset_import: ["" : 23]>
branchy (float[M, 32] x, bool cond) => (float[M, 8] y) {
    y = If (cond) <
        then_branch = then_graph () => (float[M, 8] y_then) <float[32, 8] w_then = {WT}> {
            y_then = MatMul (x, w_then)
        },
        else_branch = else_graph () => (float[M, 8] y_else) <float[32, 8] w_else = {WE}> {
            y_else = MatMul (x, w_else)
        }
    >
}
"""


def _model(w_then, w_else):
    text = MODEL.replace("{WT}", "{" + ", ".join(map(repr, w_then.ravel().tolist())) + "}")
    text = text.replace("{WE}", "{" + ", ".join(map(repr, w_else.ravel().tolist())) + "}")
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def _run(model, x, cond):
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "cond": np.array(cond)})[0]


def _linears(*names):
    return [dict(layer=0, role="q_proj", module=n.removesuffix(".w"), weight=n, bias=None, in_features=K,
                 out_features=N) for n in names]


def test_pass_rewrites_inside_if_branches():
    rng = np.random.default_rng(0)
    w_then, w_else = (rng.standard_normal((K, N)).astype(np.float32) for _ in range(2))
    model = _model(w_then, w_else)
    options = QuantOptions("w8a8")
    (report,) = Pipeline([QuantizeLinearsPass(options, _linears("w_then", "w_else"), {})])(model)
    assert report.matches == 2 and report.name == "quantize_linears"
    ops = {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)}
    assert "DequantizeLinear" in ops and "ReduceMin" in ops
    x = rng.standard_normal((5, K)).astype(np.float32)
    for cond, w in ((True, w_then), (False, w_else)):
        ql = quantize_linear(w, format_for(options, "q_proj", K), None, "rtn")
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)  # per-token 8-bit, written out in numpy
        s = (hi - lo) / np.float32(255)
        q = np.clip(np.floor((x - lo) / s + np.float32(0.5)), 0, 255) - np.float32(128)
        xq = q * s + (lo + np.float32(128) * s)
        np.testing.assert_allclose(_run(model, x, cond), xq @ ql.dequantized(), rtol=0, atol=1e-5)


def test_pass_that_matches_nothing_warns_why(caplog):
    rng = np.random.default_rng(1)
    model = _model(*(rng.standard_normal((K, N)).astype(np.float32) for _ in range(2)))
    with caplog.at_level(logging.WARNING):
        (report,) = Pipeline([QuantizeLinearsPass(QuantOptions("w8a8"), [], {})])(model)
    assert report.matches == 0
    assert "quantize_linears matched nothing" in caplog.text and "not a linear in planforge.json" in caplog.text
