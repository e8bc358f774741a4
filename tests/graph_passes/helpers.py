"""Builds one (quantized) linear as a standalone ONNX model, and runs one on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from planforge.graph_passes.calibration import LinearStats
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.pipeline import Pipeline
from planforge.graph_passes.quantize_linears import QuantizeLinearsPass, build_quantized_linear


def linear_model(w: np.ndarray, dtype: int = 1) -> ir.Model:
    """y = x @ w for x (B, S, K) of TensorProto ``dtype``, one MatMul named like an exported linear."""
    import onnx
    from onnx import helper as h
    from onnx import numpy_helper as nh

    k, n = w.shape
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    graph = h.make_graph([h.make_node("MatMul", ["x", "lin.weight"], ["y"], name="lin/MatMul")], "one_linear",
                         [h.make_tensor_value_info("x", dtype, ["B", "S", k])],
                         [h.make_tensor_value_info("y", dtype, ["B", "S", n])],
                         [nh.from_array(w.astype(np_dtype), "lin.weight")])
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 23)], ir_version=10))


def quantized_linear_model(w: np.ndarray, options, dtype: int = 1, role: str = "q_proj") -> ir.Model:
    """``linear_model`` through the quantize pass, with calibration maxima in which some columns stand out."""
    model = linear_model(w, dtype)
    linears = [dict(layer=0, role=role, module="lin", weight="lin.weight", bias=None, in_features=w.shape[0],
                    out_features=w.shape[1])]
    absmax = np.random.default_rng(3).random(w.shape[0]) + np.arange(w.shape[0]) % 7
    Pipeline([QuantizeLinearsPass(options, linears, {"lin.weight": LinearStats(absmax, None)})])(model)
    return model


def run_quantized_linear(x: np.ndarray, ql, extra_outputs=(), dtype=ir.DataType.FLOAT, session_config=None):
    """x (M, K) -> [y, *extra] where extra are intermediate values by their node-name suffix (e.g. 'act/q')."""
    import onnxruntime as ort

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 23}, name="linear")
    xv = ir.val("x", ir.DataType(dtype), ir.Shape(["m", x.shape[1]]))
    graph.inputs.append(xv)
    b = NodeBuilder(graph, "lin")
    y = build_quantized_linear(b, xv, ql, dtype)
    graph.extend(b.tape.nodes)
    outputs = [y] + [next(v for n in b.tape.nodes for v in n.outputs if v.name == f"lin/{s}_output")
                     for s in extra_outputs]
    graph.outputs.extend(outputs)
    options = ort.SessionOptions()
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([v.name for v in outputs], {"x": x})
