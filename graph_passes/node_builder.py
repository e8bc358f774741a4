"""Builders that create a rewrite's nodes and initializers in an onnx-ir graph, all named under one prefix.

``NodeBuilder`` names its constants ``{prefix}.{name}`` (one rewrite, one set of new weights);
``BranchBuilder`` names them ``{prefix}/{name}`` or takes a name as given and reuses an initializer
that already exists, because several ``If`` branches share the same gathered weights.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir import tape


class NodeBuilder:
    """Records new nodes in creation order (``self.nodes``: tape ops and clones); constants become initializers."""

    def __init__(self, graph: ir.Graph, prefix: str):
        self.graph, self.prefix, self.tape = graph, prefix, tape.Tape()
        self.nodes: list[ir.Node] = []
        self._names: dict[str, int] = {}

    def _unique(self, name: str) -> str:
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        return name if n == 0 else f"{name}_{n}"

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        return self._register(f"{self.prefix}.{name}", array)

    def _register(self, full_name: str, array: np.ndarray) -> ir.Value:
        tensor = ir.tensor(array, name=full_name)
        value = ir.Value(name=full_name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=tensor.shape)
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs: list, name: str, num_outputs: int = 1, _domain: str = "", **attributes):
        """One output: its value; several: the list of them. ``_domain`` names a custom-op domain."""
        node_name = self._unique(f"{self.prefix}/{name}")
        if num_outputs == 1:
            out = self.tape.op(op_type, inputs, attributes or None, domain=_domain, name=node_name)
            out.name = f"{node_name}_output"
            self.nodes.append(out.producer())
            return out
        outs = self.tape.op_multi_out(op_type, inputs, attributes or None, domain=_domain, num_outputs=num_outputs,
                                      name=node_name)
        self.nodes.append(outs[0].producer())
        for i, out in enumerate(outs):
            out.name = f"{node_name}_output_{i}"
        return list(outs)

    def clone(self, node: ir.Node, vmap: dict) -> ir.Node:
        """A copy of ``node`` whose inputs go through ``vmap``; its outputs are added to ``vmap``."""
        inputs = [None if v is None else vmap.get(v, v) for v in node.inputs]
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        name = self._unique(f"{self.prefix}/{node.name}")
        new = ir.Node(node.domain, node.op_type, inputs, attrs, num_outputs=len(node.outputs), name=name,
                      version=node.version, overload=node.overload)
        for old, out in zip(node.outputs, new.outputs):
            out.name, out.type, out.shape = f"{self.prefix}/{old.name}", old.type, old.shape
            vmap[old] = out
        self.nodes.append(new)
        return new


class BranchBuilder(NodeBuilder):
    """Nodes for one ``If`` branch; its constants are main-graph initializers shared between branches."""

    def const(self, name: str, array: np.ndarray, raw_name: bool = False) -> ir.Value:
        array = np.asarray(array)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        full = name if raw_name else f"{self.prefix}/{name}"
        existing = self.graph.initializers.get(full)
        if existing is not None:
            return existing
        return self._register(full, np.require(array, requirements="C"))  # keeps 0-d arrays 0-d
