"""The contextual-sparsity rule of the plugin lowering: the sparsity pass's per-layer ``If`` -> plugin ops.

The sparsity pass (``contextual_sparsity.py``) leaves, per layer, ``If(S == 1, decode, dense)``
whose dense branch is the model with the unselected heads' and neurons' outputs masked per
token, and whose decode branch computes the same thing at S == 1 from gathered weight copies
(``*.sparse_rows``, transposed). The lowered ``If`` is built from the dense branch alone::

    dense:  Attention ─► Reshape ─► Mul(head mask) ─► Reshape ─► MatMul(Wo)
            act(MatMul(h, Wg)) · MatMul(h, Wu) ─► Mul(neuron mask) ─► MatMul(Wd)
 => then:   SparseHeadsAttention(h, Wq rows, Wo, k_cache', v_cache', lengths, heads)   (v3)
            SparseMLP(h2, Wg rows, Wu rows, Wd, neurons)
    else:   the dense branch, its Attention on FusedAttentionPrefill

with the layer's ``KVCacheUpdate`` before the ``If``: every KV head is written each step, so the
cache stays complete while the selection changes token by token, which is the sparsity pass's
timing. ``heads`` / ``neurons`` are the masks' own top-k indices, so both branches select
exactly what the portable graph selects. q_proj, gate_proj and up_proj are stored once in
their row layout (a head's or a neuron's weights contiguous, as the ops read them), and the
dense branch reads them through a ``Transpose`` (a view on the torch backend; folded by
TensorRT). The decode branch's gathered copies go, so the lowered sparse model is the dense
model plus its predictor.

A part the ops cannot express (an activation other than SiLU, biases on gate/up, rotary the
op does not take) stays the masked dense form in the decode branch, with a refusal that
``--allow-partial`` accepts. A quantized sparse graph is refused whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import onnx_ir as ir

from planforge.graph_passes.base import ancestors, descendants
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.plugin_nodes import drop_presents, plugin, to_heads


@dataclass
class HeadsMatch:
    q_matmul: ir.Node
    q_bias: Optional[ir.Value]
    rotary: Optional[ir.Node]
    o_matmul: ir.Node
    selection: ir.Value  # (B, S, h) top-k query heads of this layer, int64


@dataclass
class MLPMatch:
    gate: ir.Node
    up: ir.Node
    down: ir.Node
    selection: ir.Value  # (B, S, k) top-k neurons of this layer, int64


@dataclass
class SparseLayerSite:
    if_node: ir.Node
    dense: ir.Graph  # the else branch: the masked model
    attention: Optional[object]  # the AttentionSite of an Attention inside the branch
    heads: Optional[HeadsMatch]
    mlp: Optional[MLPMatch]
    refusals: list[str]  # the parts that stay masked dense ops


def _only_use(value: ir.Value, op_type: str) -> Optional[ir.Node]:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and uses[0].node.op_type == op_type else None


def _weight(matmul: Optional[ir.Node]) -> Optional[ir.Value]:
    """The MatMul's weight when it is a float initializer (not a dequantized one)."""
    if matmul is None or matmul.op_type != "MatMul" or matmul.inputs[1].const_value is None:
        return None
    return matmul.inputs[1]


def _mask_selection(mul: ir.Node, value: ir.Value) -> Optional[ir.Value]:
    """``Mul(value, [Unsqueeze] ScatterElements(zeros, selection, ones))`` -> the selection."""
    other = next((v for v in mul.inputs if v is not value), None)
    producer = other.producer() if other is not None else None
    if producer is not None and producer.op_type == "Unsqueeze":
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type != "ScatterElements":
        return None
    return producer.inputs[1]


class SparseLayerRule:
    """pattern: an ``If`` on the main graph with masked dense units in its else branch; check; rewrite."""

    def check(self, if_node: ir.Node, attention_of: Callable) -> Union[SparseLayerSite, str]:
        where = f"{if_node.name} (If)"
        dense = if_node.attributes["else_branch"].value
        attentions = [n for n in dense if n.op_type == "Attention"]
        if len(attentions) > 1:
            return f"{where}: {len(attentions)} Attention nodes in one branch"
        if any(n.op_type == "DequantizeLinear" for n in dense) or any(
                n.op_type == "MatMul" and n.inputs[1].producer() is not None for n in dense):
            return (f"{where}: the sparse layer's weights are quantized; SparseHeadsAttention and SparseMLP read "
                    "float weights, so a quantized sparse graph is not lowered yet")
        site = SparseLayerSite(if_node, dense, None, None, None, [])
        if attentions:
            site.attention = attention_of(attentions[0], if_node)
            if isinstance(site.attention, str):
                return site.attention
            site.heads = self._match_heads(attentions[0])
            if site.heads is None:
                site.refusals.append(f"{attentions[0].name} (Attention): the head mask, q_proj (with an optional "
                                     "bias and rotate-half rotary) or o_proj is not in the form SparseHeadsAttention "
                                     "takes; its decode stays masked dense attention")
        down_inputs = [n for n in dense if n.op_type == "Mul" and _only_use(n.outputs[0], "MatMul") is not None]
        masked = [n for n in down_inputs if any(_mask_selection(n, v) is not None for v in n.inputs)]
        if masked:
            site.mlp = self._match_mlp(masked[0])
            if site.mlp is None:
                site.refusals.append(f"{masked[0].name} (Mul): the masked MLP is not SiLU(x Wg) * (x Wu) without "
                                     "biases, the form SparseMLP takes; its decode stays masked dense")
        if not attentions and not masked:
            return f"{where}: not the contextual-sparsity pass's If (no masked heads or neurons)"
        return site

    @staticmethod
    def _match_heads(attention: ir.Node) -> Optional[HeadsMatch]:
        split = _only_use(attention.outputs[0], "Reshape")
        mul = _only_use(split.outputs[0], "Mul") if split else None
        merge = _only_use(mul.outputs[0], "Reshape") if mul else None
        o = _only_use(merge.outputs[0], "MatMul") if merge else None
        selection = _mask_selection(mul, split.outputs[0]) if mul else None
        if _weight(o) is None or selection is None:
            return None
        q, rotary, bias = attention.inputs[0], None, None
        if q.producer() is not None and q.producer().op_type == "RotaryEmbedding":
            rotary = q.producer()
            attrs = {name: a.value for name, a in rotary.attributes.items()}
            if attrs.get("interleaved", 0) or attrs.get("rotary_embedding_dim", 0) or len(rotary.inputs) < 4 \
                    or rotary.inputs[3] is None:
                return None
            q = rotary.inputs[0]
        producer = q.producer()
        if producer is not None and producer.op_type == "Add":
            matmul = next((v.producer() for v in producer.inputs if v.producer() is not None), None)
            bias = next((v for v in producer.inputs if v.const_value is not None), None)
            if bias is None or len(bias.shape) != 1:
                return None
            producer = matmul
        if _weight(producer) is None:
            return None
        return HeadsMatch(producer, bias, rotary, o, selection)

    @staticmethod
    def _match_mlp(mask_mul: ir.Node) -> Optional[MLPMatch]:
        down = _only_use(mask_mul.outputs[0], "MatMul")
        gated = next((v.producer() for v in mask_mul.inputs if _mask_selection(mask_mul, v) is not None), None)
        if _weight(down) is None or gated is None or gated.op_type != "Mul":
            return None
        selection = _mask_selection(mask_mul, gated.outputs[0])
        halves = [v.producer() for v in gated.inputs]
        silu = next((n for n in halves if n is not None and n.op_type == "Mul"), None)
        up = next((n for n in halves if n is not None and n.op_type == "MatMul"), None)
        if silu is None or up is None:
            return None
        sigmoid = next((v.producer() for v in silu.inputs if v.producer() is not None
                        and v.producer().op_type == "Sigmoid"), None)
        gate_out = next((v for v in silu.inputs if v.producer() is not None and v.producer().op_type == "MatMul"), None)
        if sigmoid is None or gate_out is None or sigmoid.inputs[0] is not gate_out:
            return None
        gate = gate_out.producer()
        if _weight(gate) is None or _weight(up) is None or gate.inputs[0] is not up.inputs[0]:
            return None
        return MLPMatch(gate, up, down, selection)

    # ------------------------------------------------------------------------------------------ rewrite
    def rewrite(self, graph: ir.Graph, site: SparseLayerSite, shared, attention_rule, rows: "RowLayout"):
        """Replaces the If; returns the layer's LayerCache when its attention is inside (else None)."""
        if_node, dense = site.if_node, site.dense
        prefix = f"{if_node.name}/planforge"
        b = NodeBuilder(graph, prefix)
        cache = attention_rule.write_cache(b, site.attention, shared) if site.attention else None
        seq_lens = shared.seq_lens(b, cache.capacity) if cache else None
        for match in (site.heads, site.mlp):  # weights the ops read as rows: stored once, transposed for MatMul
            if isinstance(match, HeadsMatch):
                rows.use_rows(match.q_matmul.inputs[1])
            elif isinstance(match, MLPMatch):
                rows.use_rows(match.gate.inputs[1])
                rows.use_rows(match.up.inputs[1])
        presents = set(site.attention.node.outputs[1:3]) if site.attention else set()
        kept = [i for i, v in enumerate(dense.outputs) if v not in presents]

        decode = NodeBuilder(graph, f"{prefix}/decode")
        replaced = {}  # node of the dense branch -> function(builder, vmap) that maps its output instead
        skipped: set = set()
        if site.heads:
            h = site.heads
            skipped |= self._between([h.q_matmul], h.o_matmul) | {site.attention.node}
            replaced[h.o_matmul] = lambda bb, vmap: self._sparse_heads(bb, h, site.attention, cache, seq_lens, vmap,
                                                                       rows)
        if site.mlp:
            m = site.mlp
            skipped |= self._between([m.gate, m.up], m.down)
            replaced[m.down] = lambda bb, vmap: self._sparse_mlp(bb, m, vmap, rows)
        vmap: dict = {}
        for node in dense:
            if node in replaced:
                vmap[node.outputs[0]] = replaced[node](decode, vmap)
            elif node in skipped:
                continue
            elif site.attention and node is site.attention.node:
                qh = self._heads_of(decode, vmap.get(node.inputs[0], node.inputs[0]), site.attention)
                vmap[node.outputs[0]] = attention_rule.decode(decode, site.attention, qh, cache, seq_lens)
            else:
                decode.clone(node, vmap)
        then_outputs = [vmap[dense.outputs[i]] for i in kept]

        prefill = NodeBuilder(graph, f"{prefix}/dense")
        vmap = {}
        for node in dense:
            if site.attention and node is site.attention.node:
                qh = self._heads_of(prefill, vmap.get(node.inputs[0], node.inputs[0]), site.attention)
                vmap[node.outputs[0]] = attention_rule.prefill(prefill, site.attention, qh, cache)
            else:
                prefill.clone(node, vmap)
        else_outputs = [vmap[dense.outputs[i]] for i in kept]
        for new_outputs in (then_outputs, else_outputs):
            for value, i in zip(new_outputs, kept):
                value.type, value.shape = dense.outputs[i].type, dense.outputs[i].shape

        new_if = ir.Node("", "If", [shared.is_decode(b)], [
            ir.AttrGraph("then_branch", ir.Graph([], then_outputs, nodes=decode.nodes, name=f"{prefix}/decode")),
            ir.AttrGraph("else_branch", ir.Graph([], else_outputs, nodes=prefill.nodes, name=f"{prefix}/dense"))],
            num_outputs=len(kept), name=f"{prefix}/If")
        for new, i in zip(new_if.outputs, kept):
            old = if_node.outputs[i]
            new.name, new.type, new.shape = f"{prefix}/{old.name}", old.type, old.shape
        graph.insert_before(if_node, b.nodes + [new_if])
        for new, i in zip(new_if.outputs, kept):
            if_node.outputs[i].replace_all_uses_with(new, replace_graph_outputs=True)
        if cache is not None:
            drop_presents(graph, site.attention.presents, cache)
        for branch in if_node.attributes.values():  # its nodes stop using outer values (the gathered copies)
            for node in ir.traversal.RecursiveGraphIterator(branch.value):
                for i in range(len(node.inputs)):
                    node.replace_input_with(i, None)
        graph.remove(if_node, safe=True)
        return cache

    @staticmethod
    def _between(starts: list[ir.Node], end: ir.Node) -> set:
        """The nodes from ``starts`` to ``end``, both included: what one fused op replaces."""
        return (descendants([v for n in starts for v in n.outputs]) & ancestors([end])) | set(starts) | {end}

    @staticmethod
    def _heads_of(b: NodeBuilder, q: ir.Value, attention) -> ir.Value:
        return to_heads(b, q, attention.num_heads, attention.head_dim, "q")

    @staticmethod
    def _indices(b: NodeBuilder, selection: ir.Value, tag: str) -> ir.Value:
        """(B, 1, k) int64 top-k indices -> (B, k) int32."""
        flat = b.op("Reshape", [selection, b.const(f"{tag}.flat", np.array([0, -1], np.int64))], f"{tag}/Reshape")
        return b.op("Cast", [flat], f"{tag}/Cast", to=ir.DataType.INT32)

    @staticmethod
    def _row(b: NodeBuilder, x: ir.Value, tag: str) -> ir.Value:
        return b.op("Squeeze", [x, b.const(f"{tag}.seq_axis", np.array([1], np.int64))], f"{tag}/Squeeze")

    @staticmethod
    def _step(b: NodeBuilder, y: ir.Value, tag: str) -> ir.Value:
        return b.op("Unsqueeze", [y, b.const(f"{tag}.seq_axis", np.array([1], np.int64))], f"{tag}/Unsqueeze")

    def _sparse_heads(self, b: NodeBuilder, h: HeadsMatch, attention, cache, seq_lens, vmap: dict,
                      rows: "RowLayout") -> ir.Value:
        x = self._row(b, vmap.get(h.q_matmul.inputs[0], h.q_matmul.inputs[0]), "heads/x")
        cos = sin = None
        if h.rotary is not None:
            positions = self._row(b, h.rotary.inputs[3], "heads/positions")
            cos, sin = (b.op("Cast", [b.op("Gather", [table, positions], f"heads/{tag}/Gather")], f"heads/{tag}/Cast",
                             to=ir.DataType.FLOAT)
                        for table, tag in ((h.rotary.inputs[1], "cos"), (h.rotary.inputs[2], "sin")))
        heads = self._indices(b, vmap[h.selection], "heads")
        y = plugin(b, "SparseHeadsAttention", [x, rows.rows_of(h.q_matmul.inputs[1]), h.o_matmul.inputs[1], cache.k,
                                               cache.v, seq_lens, heads, h.q_bias, cos, sin],
                   "SparseHeadsAttention", scale=attention.scale)
        return self._step(b, y, "heads/y")

    def _sparse_mlp(self, b: NodeBuilder, m: MLPMatch, vmap: dict, rows: "RowLayout") -> ir.Value:
        x = self._row(b, vmap.get(m.gate.inputs[0], m.gate.inputs[0]), "mlp/x")
        neurons = self._indices(b, vmap[m.selection], "neurons")
        y = plugin(b, "SparseMLP", [x, rows.rows_of(m.gate.inputs[1]), rows.rows_of(m.up.inputs[1]), m.down.inputs[1],
                                    neurons], "SparseMLP")
        return self._step(b, y, "mlp/y")


class RowLayout:
    """Weights a sparse op reads by rows ([out, in]): the MatMul weight [in, out] is replaced by its transpose,
    stored once as ``{name}.rows``, and every MatMul reads it back through one main-graph ``Transpose``."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self._rows: dict[ir.Value, ir.Value] = {}  # the Transpose view -> the row-layout initializer
        self.nodes: list[ir.Node] = []  # the views, for the top of the main graph

    def use_rows(self, weight: ir.Value) -> None:
        if weight in self._rows:  # already the view
            return
        array = np.ascontiguousarray(weight.const_value.numpy().T)
        tensor = ir.tensor(array, name=f"{weight.name}.rows")
        rows = ir.Value(name=tensor.name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=tensor.shape)
        self.graph.register_initializer(rows)
        view = ir.Node("", "Transpose", [rows], [ir.AttrInt64s("perm", [1, 0])], name=f"{weight.name}/rows/Transpose")
        view.outputs[0].name, view.outputs[0].type, view.outputs[0].shape = \
            f"{weight.name}/rows/Transpose_output", weight.type, weight.shape
        weight.replace_all_uses_with(view.outputs[0])
        self.graph.initializers.pop(weight.name)
        self.nodes.append(view)
        self._rows[view.outputs[0]] = rows

    def rows_of(self, view: ir.Value) -> ir.Value:
        """The row-layout initializer behind a MatMul's (swapped) weight input."""
        return self._rows[view]
