"""Node-building pieces the plugin-lowering rules share (attention, sparse, streaming): a ``planforge`` node,
the per-head view, a layer's in-place cache write, and the ``If(S == 1, decode, prefill)`` that replaces an
attention node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from planforge import constants
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.plugins import DOMAIN
from planforge.plugins.registry import NODE_ATTRIBUTES, plugin_op


def plugin(b: NodeBuilder, op_type: str, inputs: list, name: str, **attributes):
    """A ``planforge`` node with the TensorRT lookup attributes; one value, or a list for several outputs."""
    schema = plugin_op(op_type).schema
    lookup = dict(zip(NODE_ATTRIBUTES, (DOMAIN, str(schema.version))))
    return b.op(op_type, inputs, name, num_outputs=len(schema.outputs), _domain=DOMAIN, **attributes, **lookup)


def to_heads(b: NodeBuilder, x: ir.Value, heads: int, head_dim: int, tag: str) -> ir.Value:
    """(B, S, H*D) -> (B, H, S, D)."""
    split = b.op("Reshape", [x, b.const(f"{tag}.heads", np.array([0, 0, heads, head_dim], np.int64))], f"{tag}/Reshape")
    return b.op("Transpose", [split], f"{tag}/Transpose", perm=[0, 2, 1, 3])


@dataclass
class LayerCache:
    inputs: tuple[ir.Value, ir.Value]  # the preallocated buffers (graph inputs)
    k: ir.Value  # the buffers after this step's KVCacheUpdate (graph outputs, aliased)
    v: ir.Value
    k_new: ir.Value  # this step's K/V as (B, Hkv, S, D)
    v_new: ir.Value
    capacity: int


def cache_update(b: NodeBuilder, layer: int, elem: ir.DataType, shape: tuple[int, int, int], k_new: ir.Value,
                 v_new: ir.Value, past_lengths: ir.Value, rolling: bool, sinks: int = 0) -> LayerCache:
    """Layer ``layer``'s preallocated cache inputs (B, Hkv, C, D), ``shape`` = (Hkv, C, D), and their in-place
    ``KVCacheUpdate`` with this step's K/V (B, Hkv, S, D)."""
    kv_heads, capacity, head_dim = shape
    shape = ir.Shape(["batch", kv_heads, capacity, head_dim])
    cache_in = [ir.Value(name=name(layer), type=ir.TensorType(elem), shape=shape)
                for name in (constants.cache_key, constants.cache_value)]
    k_cache, v_cache = plugin(b, "KVCacheUpdate", [*cache_in, k_new, v_new, past_lengths], "KVCacheUpdate",
                              rolling=int(rolling), sinks=sinks)
    k_cache.name, v_cache.name = constants.cache_key_out(layer), constants.cache_value_out(layer)
    for out in (k_cache, v_cache):
        out.type, out.shape = ir.TensorType(elem), shape
    return LayerCache((cache_in[0], cache_in[1]), k_cache, v_cache, k_new, v_new, capacity)


def replace_with_if(graph: ir.Graph, node: ir.Node, b: NodeBuilder, is_decode: ir.Value, decode: NodeBuilder,
                    y_decode: ir.Value, prefill: NodeBuilder, y_prefill: ir.Value) -> None:
    """``b``'s nodes, then ``If(is_decode, decode branch, prefill branch)`` take the place of ``node``'s first
    output; the caller removes ``node`` once its other outputs are gone."""
    y_old = node.outputs[0]
    for y in (y_decode, y_prefill):
        y.type, y.shape = y_old.type, y_old.shape
    branch = lambda builder, y, tag: ir.Graph([], [y], nodes=builder.nodes, name=f"{node.name}/{tag}")  # noqa: E731
    if_node = ir.Node("", "If", [is_decode], [
        ir.AttrGraph("then_branch", branch(decode, y_decode, "decode")),
        ir.AttrGraph("else_branch", branch(prefill, y_prefill, "prefill"))], num_outputs=1,
        name=f"{node.name}/planforge/If")
    if_node.outputs[0].name, if_node.outputs[0].type, if_node.outputs[0].shape = \
        f"{node.name}/planforge/y", y_old.type, y_old.shape
    graph.insert_before(node, b.nodes + [if_node])
    y_old.replace_all_uses_with(if_node.outputs[0], replace_graph_outputs=True)


def drop_presents(graph: ir.Graph, presents: list[ir.Node], cache: LayerCache) -> None:
    """The concatenated present K/V outputs (their Identity nodes) give way to the in-place caches."""
    for identity in presents:
        graph.outputs.remove(identity.outputs[0])
    graph.remove(presents, safe=True)
    graph.outputs.extend([cache.k, cache.v])
