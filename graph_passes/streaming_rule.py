"""The streaming rule of the plugin lowering: StreamingLLM attention -> a rolling sink cache written in place.

The streaming pass (``streaming_attention.py``) caches keys before rotary and rotates the
keys it attends by their index in the kept cache. Lowered, per layer::

    k_cache', v_cache' = KVCacheUpdate(k_cache, v_cache, K(k), K(v), past_lengths; rolling=1, sinks=S)
    y = If(S == 1,
           then: FusedAttentionDecode(RoPE(q, q_position), RoPE(k_cache', slot_positions), v_cache',
                                      min(past_lengths + 1, C)),
           else: FusedAttentionPrefill(RoPE(q, position_ids), RoPE(K(k), position_ids), K(v); window=W, sinks=S))

with ``C = S + W`` slots. The buffer is physically rolled (slot of token p: p below S, else
S + (p - S) mod W), so the decode branch gives each slot the position of its token's *rank*
in the kept cache, which is the portable graph's position: sinks at their slot, the window's
tokens at S, S+1, ... by age, the newest at S + n - 1 with n the window tokens held; the query
sits at min(past_lengths, C - 1). Softmax attention does not see the slots' order. Prefill
runs from an empty cache, where rank is position. The slot positions are computed once per
step for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx_ir as ir

from planforge import constants
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.plugin_nodes import cache_update, drop_presents, plugin, replace_with_if


@dataclass
class StreamingSite:
    node: ir.Node  # the streaming Attention (no past inputs)
    layer: int
    num_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    q_rope: ir.Node
    k_heads: ir.Value  # (B, Hkv, n, D) before rotary
    v_heads: ir.Value
    past: tuple[ir.Value, ir.Value]
    presents: list[ir.Node]  # the Identity nodes that make present_k/v graph outputs
    sinks: int
    window: int

    @property
    def capacity(self) -> int:
        return self.sinks + self.window


def _concat_parts(value: ir.Value, graph: ir.Graph) -> Optional[tuple[ir.Value, ir.Value, ir.Value]]:
    """``Gather(Concat(past, new), index)`` -> (past graph input, new, the concatenation)."""
    gather = value.producer()
    concat = gather.inputs[0].producer() if gather is not None and gather.op_type == "Gather" else None
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2 or concat.inputs[0] not in graph.inputs:
        return None
    return concat.inputs[0], concat.inputs[1], concat.outputs[0]


class StreamingAttentionRule:
    """pattern: the streaming pass's ``Attention(RoPE(q), RoPE(Gather(Concat(past, k))), Gather(Concat(past, v)))``."""

    def check(self, node: ir.Node, layer: int, manifest, graph: ir.Graph) -> Union[StreamingSite, str]:
        where = f"{node.name} ({node.op_type})"
        q_rope, k_rope = (v.producer() for v in node.inputs[:2])
        if q_rope is None or k_rope is None or q_rope.op_type != "RotaryEmbedding" \
                or k_rope.op_type != "RotaryEmbedding":
            return f"{where}: no past key/value graph inputs and not the streaming pass's rotary attention"
        keys, values = _concat_parts(k_rope.inputs[0], graph), _concat_parts(node.inputs[2], graph)
        if keys is None or values is None:
            return f"{where}: no past key/value graph inputs and not the streaming pass's Gather(Concat(past, new))"
        if any(w is not None for w in manifest.sliding_windows):
            return (f"{where}: a streaming model with its own sliding window (its window counts true token age, "
                    "which the rolling sink cache does not keep); not lowered yet")
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        if attrs.get("softcap", 0.0) or attrs.get("qk_matmul_output_mode", 0) or attrs.get("is_causal", 0):
            return f"{where}: is_causal, softcap or qk_matmul_output_mode is set; the fused ops have none"
        rope = {name: attr.value for name, attr in q_rope.attributes.items()}
        if rope.get("interleaved", 0) or rope.get("rotary_embedding_dim", 0):
            return f"{where}: interleaved or partial rotary; the lowering rotates the whole head, rotate-half"
        presents, attended = [], {k_rope.inputs[0].producer(), node.inputs[2].producer()}
        for _, _, everything in (keys, values):  # the other Gather of the concatenation keeps the cache
            kept = [u.node for u in everything.uses() if u.node not in attended]
            outs = [u.node for u in kept[0].outputs[0].uses()] if len(kept) == 1 and kept[0].op_type == "Gather" else []
            if len(outs) != 1 or outs[0].op_type != "Identity" or outs[0].outputs[0] not in graph.outputs:
                return f"{where}: the kept cache is not one present graph output"
            presents.append(outs[0])
        streaming, d = manifest.streaming, manifest.dims
        return StreamingSite(node, layer, d.num_heads, d.num_kv_heads, d.head_dim, float(attrs.get("scale") or 0.0),
                             q_rope, keys[1], values[1], (keys[0], values[0]), presents,
                             int(streaming["sink_tokens"]), int(streaming["window"]))

    def rewrite(self, graph: ir.Graph, site: StreamingSite, shared,
                positions: "StreamingPositions") -> tuple[ir.Value, ir.Value]:
        node = site.node
        b = NodeBuilder(graph, f"{node.name}/planforge")
        cache = cache_update(b, site.layer, site.past[0].dtype, (site.kv_heads, site.capacity, site.head_dim),
                             site.k_heads, site.v_heads, shared.past_lengths, rolling=True, sinks=site.sinks)
        q, cos, sin = site.q_rope.inputs[0], site.q_rope.inputs[1], site.q_rope.inputs[2]
        rope = lambda builder, x, pos, tag: builder.op("RotaryEmbedding", [x, cos, sin, pos], f"{tag}/RotaryEmbedding")  # noqa: E731

        decode = NodeBuilder(graph, f"{node.name}/planforge/decode")
        keys = rope(decode, cache.k, positions.slots(b, site.sinks, site.window), "k")
        q1 = decode.op("Squeeze", [rope(decode, q, positions.query(b, site.capacity), "q"),
                                   decode.const("seq_axis", np.array([2], np.int64))], "q/Squeeze")
        attended = plugin(decode, "FusedAttentionDecode", [q1, keys, cache.v, shared.seq_lens(b, site.capacity)],
                          "FusedAttentionDecode", scale=site.scale)
        y_decode = decode.op("Unsqueeze", [attended, decode.const("seq_axis2", np.array([2], np.int64))], "y")

        prefill = NodeBuilder(graph, f"{node.name}/planforge/prefill")
        absolute = positions.absolute
        y_prefill = plugin(prefill, "FusedAttentionPrefill", [rope(prefill, q, absolute, "q"),
                                                              rope(prefill, site.k_heads, absolute, "k"), site.v_heads],
                           "FusedAttentionPrefill", scale=site.scale, window=site.window, sinks=site.sinks)
        replace_with_if(graph, node, b, shared.is_decode(b), decode, y_decode, prefill, y_prefill)  # (B, Hq, n, D)
        drop_presents(graph, site.presents, cache)
        graph.remove(node, safe=True)
        return cache.inputs


class StreamingPositions:
    """Rotary positions of a step, made once for every layer: the query's, each cache slot's, the prompt's."""

    def __init__(self, graph: ir.Graph, past_lengths: ir.Value):
        self.graph, self.past_lengths = graph, past_lengths
        self.absolute = next(v for v in graph.inputs if v.name == constants.POSITION_IDS)  # (B, n): the prefill's
        self._past: Optional[ir.Value] = None
        self._query: Optional[ir.Value] = None
        self._slots: dict[tuple[int, int], ir.Value] = {}

    def _past_column(self, b: NodeBuilder) -> ir.Value:
        if self._past is None:  # (B, 1) int64: tokens written before this step
            self._past = b.op("Unsqueeze", [b.op("Cast", [self.past_lengths], "/planforge/stream/past", to=ir.DataType.INT64),
                                            b.const("/planforge/stream/axis1", np.array([1], np.int64))],
                              "/planforge/stream/past_column")
        return self._past

    def query(self, b: NodeBuilder, capacity: int) -> ir.Value:
        """(B, 1): the new token's rank, min(past_lengths, C - 1)."""
        if self._query is None:
            self._query = b.op("Min", [self._past_column(b), b.const("/planforge/stream/last_slot",
                                                                      np.array(capacity - 1, np.int64))],
                               "/planforge/stream/q_position")
        return self._query

    def slots(self, b: NodeBuilder, sinks: int, window: int) -> ir.Value:
        """(B, C): the rank of the token in each slot after this step's write; empty slots get 0."""
        key = (sinks, window)
        if key not in self._slots:
            tag = f"/planforge/stream/s{sinks}w{window}"
            c = lambda name, v: b.const(f"{tag}.{name}", np.array(v, np.int64))  # noqa: E731
            total = b.op("Add", [self._past_column(b), c("one", 1)], f"{tag}/total")  # (B, 1) T after the write
            slot = c("slot", np.arange(sinks + window)[None])  # (1, C)
            held = b.op("Min", [b.op("Max", [b.op("Sub", [total, c("sinks", sinks)], f"{tag}/past_sinks"), c("zero", 0)],
                                     f"{tag}/window_tokens"), c("window", window)], f"{tag}/held")  # (B, 1)
            newest = b.op("Add", [c("sinks2", sinks), b.op("Mod", [b.op("Sub", [total, c("sinks_plus_one", sinks + 1)],
                                                                        f"{tag}/newest_offset"), c("window2", window)],
                                                           f"{tag}/newest_mod")], f"{tag}/newest_slot")  # (B, 1)
            age = b.op("Mod", [b.op("Sub", [newest, slot], f"{tag}/slot_gap"), c("window3", window)], f"{tag}/age")
            rank = b.op("Sub", [b.op("Add", [c("sinks3", sinks - 1), held], f"{tag}/newest_rank"), age], f"{tag}/rank")
            rank = b.op("Max", [rank, c("zero2", 0)], f"{tag}/rank_or_zero")  # slots not yet written
            is_sink = b.op("Less", [slot, c("sinks4", sinks)], f"{tag}/is_sink")
            self._slots[key] = b.op("Where", [is_sink, slot, rank], f"{tag}/positions")  # (B, C)
        return self._slots[key]
