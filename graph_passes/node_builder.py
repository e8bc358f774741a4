"""``NodeBuilder``: creates a rewrite's nodes and initializers in an onnx-ir graph, all named under one prefix."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir import tape


class NodeBuilder:
    """Records new nodes on a tape (``self.tape.nodes``); constants become graph initializers."""

    def __init__(self, graph: ir.Graph, prefix: str):
        self.graph, self.prefix, self.tape = graph, prefix, tape.Tape()

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        tensor = ir.tensor(array, name=f"{self.prefix}.{name}")
        value = ir.Value(name=tensor.name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=tensor.shape)
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs: list, name: str, **attributes) -> ir.Value:
        out = self.tape.op(op_type, inputs, attributes or None, name=f"{self.prefix}/{name}")
        out.name = f"{self.prefix}/{name}_output"
        return out
