"""Fusions onto ONNX Runtime contrib kernels that ``lower_onnxruntime`` applies after the linears.

``Add(x, r) -> RMSNormalization(·, γ)`` (the residual stream entering a norm; float32 models)
    => ``SkipSimplifiedLayerNormalization(x, r, γ)``: output 0 is the norm, output 3 the sum,
       one pass over the hidden state instead of two kernels (what ONNX Runtime GenAI's
       builder emits for the same pattern).
"""

from __future__ import annotations

from typing import Optional

import onnx_ir as ir

MS_DOMAIN = "com.microsoft"


def _residual_norm(node: ir.Node) -> Optional[ir.Node]:
    """The Add feeding ``node`` when ``node`` is a last-axis RMSNormalization of a residual sum in its graph."""
    if node.op_type != "RMSNormalization" or node.domain != "" or len(node.inputs) != 2:
        return None
    axis = node.attributes.get("axis")
    if axis is not None and axis.as_int() != -1:
        return None
    scale = node.inputs[1]
    if scale is None or scale.const_value is None or len(scale.const_value.shape) != 1:
        return None
    if scale.const_value.dtype != ir.DataType.FLOAT:
        # fp16/bf16: the fused kernel normalizes the float32 sum, the portable graph the rounded one; a
        # one-ulp difference there flips the next layer's 4-bit activation codes, so they stay unfused
        return None
    add = node.inputs[0].producer() if node.inputs[0] is not None else None
    if add is None or add.op_type != "Add" or add.domain != "" or any(v is None for v in add.inputs):
        return None
    if add.graph is not node.graph:
        return None  # the sum comes from an outer graph (an If branch reading the residual stream)
    if any(v.const_value is not None or v.is_initializer() for v in add.inputs):
        return None  # a bias add, not the residual stream plus a layer's output
    return add


def fuse_residual_norms(graph: ir.Graph) -> int:
    """Rewrites every ``Add -> RMSNormalization`` residual pair of ``graph``; returns how many."""
    count = 0
    for node in list(graph):
        add = _residual_norm(node)
        if add is None:
            continue
        epsilon = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
        fused = ir.Node(MS_DOMAIN, "SkipSimplifiedLayerNormalization", [add.inputs[0], add.inputs[1], node.inputs[1]],
                        attributes=[ir.AttrFloat32("epsilon", epsilon)], num_outputs=4,
                        name=f"{node.name}/SkipSimplifiedLayerNormalization")
        normed, _, _, total = fused.outputs
        normed.name, total.name = f"{fused.name}_output", f"{fused.name}_sum"
        for new, old in ((normed, node.outputs[0]), (total, add.outputs[0])):
            new.type, new.shape = old.type, old.shape
        graph.insert_before(add, fused)
        node.outputs[0].replace_all_uses_with(normed, replace_graph_outputs=True)
        add.outputs[0].replace_all_uses_with(total, replace_graph_outputs=True)
        graph.remove([node, add], safe=True)
        count += 1
    return count
