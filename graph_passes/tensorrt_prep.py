"""The plugin graph, made ready for TensorRT's ONNX parser (``build --target tensorrt``).

It runs after the plugin lowering, on the graph the torch backend runs, and changes only
what TensorRT needs on each ``planforge`` node:

- the sparse ops, whose fastest form is several launches, become one op per launch, because an
  AOT plugin is one kernel: ``SparseMLP`` -> ``SparseMLPGateUp`` + ``SparseMLPDown``, and
  ``SparseHeadsAttention`` -> ``SparseHeadsQProj`` + ``SparseHeadsAttend`` + ``SparseHeadsOProj``;
- ``aot=1`` on the ops whose TensorRT plugin has an AOT implementation, which makes TensorRT
  embed their kernels rather than call back into Python;
- every omitted optional input (no rotary tables, no q bias) becomes a one-element
  placeholder with ``has_<input>=0``: TensorRT hands a plugin every input it declares.

The result still runs on the torch backend (``PluginOp.run`` reads the flags), which is how the
preparation is checked without TensorRT: the same logits as the graph it came from.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_ir as ir

from planforge.errors import LoweringError
from planforge.graph_passes.base import GraphPass, PassContext
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.plugin_nodes import plugin
from planforge.manifest import Manifest
from planforge.plugins import DOMAIN
from planforge.plugins.registry import AOT_ATTRIBUTE, plugin_op, presence_attribute

TARGET = "tensorrt"
# The plugins' Triton kernels take float16 and bfloat16 (float32 runs only the torch references).
DTYPES = ("fp16", "bf16")


class PrepareTensorRTPass(GraphPass):
    name = "prepare_tensorrt"
    expected = True

    def __init__(self, head_dim: int, group: int):
        super().__init__()
        self.head_dim, self.group = head_dim, group  # D and Hq / Hkv, for the split sparse-heads ops
        self.split_nodes = 0
        self._placeholders: dict[ir.DataType, ir.Value] = {}
        self._root: Optional[ir.Graph] = None
        self.aot_nodes = 0

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["PrepareTensorRTPass"]:
        if options.target != TARGET:
            return None
        dtype = context.manifest.dtype
        if dtype not in DTYPES:
            raise LoweringError(f"--target tensorrt needs a float16 or bfloat16 model (this one is {dtype}): the "
                                "plugins' kernels take those. Export it with `planforge export MODEL -o OUT --dtype "
                                "bf16` (or fp16), then build that.")
        return cls(context.manifest.dims.head_dim, context.manifest.dims.num_heads // context.manifest.dims.num_kv_heads)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._root = model.graph
        return super().call(model)

    def settings(self) -> dict:
        return {"aot_nodes": self.aot_nodes, "python_nodes": self.matches - self.aot_nodes,
                "split_nodes": self.split_nodes}

    def rewrite_graph(self, graph: ir.Graph) -> int:
        for node in list(graph):
            if node.domain == DOMAIN and node.op_type in _SPLITS:
                _SPLITS[node.op_type](self, graph, node)
                self.split_nodes += 1
        count = 0
        for node in graph:
            if node.domain != DOMAIN:
                continue
            schema = plugin_op(node.op_type).schema
            if schema.tensorrt_aot:
                node.attributes[AOT_ATTRIBUTE] = ir.AttrInt64(AOT_ATTRIBUTE, 1)
                self.aot_nodes += 1
            if len(node.inputs) < len(schema.inputs):
                node.resize_inputs(len(schema.inputs))
            for i, spec in enumerate(schema.inputs):
                if not spec.optional:
                    continue
                present = node.inputs[i] is not None
                node.attributes[presence_attribute(spec.name)] = ir.AttrInt64(presence_attribute(spec.name),
                                                                              int(present))
                if not present:
                    node.replace_input_with(i, self._placeholder(_placeholder_dtype(node, schema, spec)))
            count += 1
        return count

    def record(self, manifest: Manifest) -> None:
        super().record(manifest)
        manifest.target = TARGET

    def _split_sparse_mlp(self, graph: ir.Graph, node: ir.Node) -> None:
        x, w_gate, w_up, w_down_t, neurons = node.inputs
        b = NodeBuilder(graph, node.name)
        h = plugin(b, "SparseMLPGateUp", [x, w_gate, w_up, neurons], "SparseMLPGateUp")
        h.type, h.shape = ir.TensorType(ir.DataType.FLOAT), neurons.shape
        _replace(graph, node, b, plugin(b, "SparseMLPDown", [h, w_down_t, neurons], "SparseMLPDown"))

    def _split_sparse_heads(self, graph: ir.Graph, node: ir.Node) -> None:
        node.resize_inputs(len(plugin_op(node.op_type).schema.inputs))  # trailing optional inputs as None
        x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q, cos, sin = node.inputs
        scale = node.attributes.get_float("scale", 0.0)
        b = NodeBuilder(graph, node.name)
        q = plugin(b, "SparseHeadsQProj", [x, w_q, heads, b_q, cos, sin], "SparseHeadsQProj", head_dim=self.head_dim)
        attn = plugin(b, "SparseHeadsAttend", [q, k_cache, v_cache, seq_lens, heads], "SparseHeadsAttend",
                      scale=scale, group=self.group)
        for value in (q, attn):
            value.type = x.type
        _replace(graph, node, b, plugin(b, "SparseHeadsOProj", [attn, w_o, heads], "SparseHeadsOProj"))

    def _placeholder(self, dtype: ir.DataType) -> ir.Value:
        """One one-element initializer per dtype on the main graph (subgraphs read it from outer scope)."""
        if dtype not in self._placeholders:
            name = f"/planforge/tensorrt/placeholder_{dtype.name.lower()}"
            array = np.zeros(1, dtype=dtype.numpy())
            value = ir.Value(name=name, shape=ir.Shape([1]), type=ir.TensorType(dtype),
                             const_value=ir.Tensor(array, dtype=dtype, name=name))
            self._root.register_initializer(value)
            self._placeholders[dtype] = value
        return self._placeholders[dtype]


# The multi-launch ops and how each becomes its one-launch steps.
_SPLITS = {"SparseMLP": PrepareTensorRTPass._split_sparse_mlp,
           "SparseHeadsAttention": PrepareTensorRTPass._split_sparse_heads}


def _replace(graph: ir.Graph, node: ir.Node, b: NodeBuilder, y: ir.Value) -> None:
    """``b``'s nodes take ``node``'s place, ``y`` its one output."""
    old = node.outputs[0]
    y.type, y.shape = old.type, old.shape
    graph.insert_before(node, b.nodes)
    old.replace_all_uses_with(y, replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _placeholder_dtype(node: ir.Node, schema, spec) -> ir.DataType:
    """The omitted input's dtype: its one fixed dtype, else that of a present input of the same dtype set."""
    if len(spec.dtypes) == 1:
        return {"float32": ir.DataType.FLOAT, "int32": ir.DataType.INT32}[spec.dtypes[0]]
    for other, value in zip(schema.inputs, node.inputs):
        if value is not None and other.dtypes == spec.dtypes and value.dtype is not None:
            return value.dtype
    raise LoweringError(f"{node.name}: cannot tell the dtype of its omitted input {spec.name}")
