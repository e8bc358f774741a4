"""Builds one quantized linear as a standalone ONNX model and runs it on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.quantize_linears import build_quantized_linear


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
