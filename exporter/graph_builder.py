"""A small append-only ONNX graph builder over ``onnx.helper``.

The exporter writes the canonical graph directly from the weights, so the
builder only needs to name values uniquely, hold initializers and emit nodes.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from planforge import constants


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: Counter[str] = Counter()

    def unique(self, base: str) -> str:
        count = self._used[base]
        self._used[base] += 1
        return base if count == 0 else f"{base}_{count}"

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        self._used[name] += 1
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        """Declares graph output ``name``; ``value`` is renamed through Identity when it differs."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/Identity"))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def initializer(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const_i64(self, values: Sequence[int] | int, name: str) -> str:
        return self.initializer(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], *, name: str, num_outputs: int = 1, **attrs):
        """Appends a node named ``name``; returns its output name (or names when several)."""
        node_name = self.unique(name)
        outs = [f"{node_name}/output_{i}" for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if num_outputs == 1 else outs

    def model(self, producer_version: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", constants.OPSET)],
            producer_name="planforge",
            producer_version=producer_version,
        )
        model.ir_version = constants.IR_VERSION
        return model


ONNX_DTYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
