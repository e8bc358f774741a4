"""``Attention(RoPE(q), RoPE(k), v, mask, past) -> sink + rolling-window attention`` (StreamingLLM).

The KV cache holds at most ``S + W`` positions per layer: the first ``S`` tokens
of the stream (the attention sinks) and the ``W`` most recent ones. Keys are
cached *before* the rotary embedding and rotated at every step by their slot
in the cache, so positions never leave ``[0, S + W)`` however long the stream
runs (StreamingLLM's re-indexing). One layer after the rewrite (n new tokens,
P cached, T = P + n; e = 1 when the cache arrived full, else 0)::

    q ─► Reshape/Transpose (B,H,n,D) ─────────────────► RotaryEmbedding(q_positions) ──────┐
    k ─► Reshape/Transpose (B,Hkv,n,D) ─► Concat(past_key) = k_all (B,Hkv,T,D)             │
                      ├─► Gather(slots [0,min(S,T)) ∪ [S+e,T)) ─► RotaryEmbedding(slots) ┤
                      └─► Gather(slots [0,min(S,T)) ∪ [max(S,T-W),T)) ─► present_key      │
    v ─► Reshape/Transpose ─► Concat(past_value) = v_all ─► the same two Gathers ──────────┤
                                         Attention(q, keys, values, streaming mask) ◄──────┘
                                             └─► Transpose/Reshape (B,n,H·D) ─► o_proj

Query i (index P+i in k_all) sees key j when j <= P+i and (j < S or j > P+i-W):
the sinks plus the W most recent tokens, itself included. Slot S of a full cache
is outside every query's window, so attention reads the T - e keys without it. A layer with its own
``sliding_window`` w keeps it on top (true token age < w; a sink's true age comes
from ``position_ids``, which stay absolute), so a model window of w <= W gives
exactly the unstreamed model. Positions: each attended key sits at its slot
(sink j at j, any other key at j - e) and query i at P + i - e: one token per
step reproduces StreamingLLM exactly (the current token at S + W - 1, window
ages exact), and positions stay below S + W + n - 1 <= max_seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from planforge import constants
from planforge.errors import PlanforgeError, UnsupportedArchitectureError
from planforge.graph_passes.base import GraphPass, PassContext, applied
from planforge.graph_passes.node_builder import NodeBuilder


class StreamingConfigError(PlanforgeError):
    """--sink-tokens / --window that cannot give a working streaming cache."""


@dataclass(frozen=True)
class StreamingOptions:
    sink_tokens: int = 4
    window: int = 252

    @property
    def cache_slots(self) -> int:
        return self.sink_tokens + self.window

    def validate(self, max_seq_len: int) -> None:
        if self.window <= 0:
            raise StreamingConfigError(f"--window must be >= 1 (the recent tokens kept in the cache), got {self.window}.")
        if self.sink_tokens < 0:
            raise StreamingConfigError(f"--sink-tokens must be >= 0, got {self.sink_tokens}.")
        if self.sink_tokens >= self.window:
            raise StreamingConfigError(
                f"--sink-tokens {self.sink_tokens} is not fewer than --window {self.window}: the sinks are a few "
                "initial tokens (StreamingLLM uses 4) beside a larger rolling window. Lower --sink-tokens or "
                "raise --window.")
        if self.cache_slots > max_seq_len:
            raise StreamingConfigError(
                f"--sink-tokens {self.sink_tokens} + --window {self.window} = {self.cache_slots} cache positions, "
                f"more than the {max_seq_len} positions the model was exported for; positions past it were never "
                f"trained. Use --window <= {max_seq_len - self.sink_tokens}.")

    def manifest_entry(self) -> dict:
        return {"sink_tokens": self.sink_tokens, "window": self.window, "cache_slots": self.cache_slots}


@dataclass
class _Site:
    """One layer's attention as the exporter built it."""

    attention: ir.Node
    q_rope: ir.Node
    k_rope: ir.Node

    @property
    def q(self) -> ir.Value:
        return self.q_rope.inputs[0]

    @property
    def k(self) -> ir.Value:
        return self.k_rope.inputs[0]


class _StepIndices:
    """The per-step scalars and index tensors every layer shares (built once per graph)."""

    def __init__(self, b: NodeBuilder, input_ids: ir.Value, past_key: ir.Value, attention_mask: ir.Value,
                 position_ids: ir.Value, options: StreamingOptions):
        i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
        self.b = b
        self.sinks = b.const("sinks", i64([options.sink_tokens]))
        self.window = b.const("window", i64([options.window]))
        zero, one = b.const("zero", i64([0])), b.const("one", i64([1]))
        batch = b.op("Shape", [input_ids], "batch", start=0, end=1)
        n = b.op("Shape", [input_ids], "new_tokens", start=1, end=2)
        past = b.op("Shape", [past_key], "cached_tokens", start=2, end=3)
        self.total = b.op("Add", [past, n], "total_tokens")  # T (1,)
        scalar = lambda v, name: b.op("Squeeze", [v], name)  # noqa: E731
        # The cache keeps slots [0, min(S, T)) and [max(S, T - W), T): one Gather index for every layer's K and V.
        head_end = b.op("Min", [self.total, self.sinks], "sink_end")
        tail_start = b.op("Max", [self.sinks, b.op("Sub", [self.total, self.window], "tail_from")], "window_start")
        one_s = scalar(one, "one_scalar0")
        self.kept_index = b.op("Concat", [
            b.op("Range", [scalar(zero, "zero_scalar0"), scalar(head_end, "sink_end_scalar"), one_s], "sink_slots"),
            b.op("Range", [scalar(tail_start, "window_start_scalar"), scalar(self.total, "total_scalar0"), one_s],
                 "window_slots")], "kept_index", axis=0)  # (min(T, S + W),)
        # e = 1 when the cache arrived full: its oldest window slot (index S) is already out of every query's
        # window, so attention reads the T - e keys without it and their positions stay below S + W + n - 1.
        arrived_full = b.op("Sub", [b.op("Add", [past, one], "past_plus_one"), b.const("slots", i64([options.cache_slots]))],
                            "over_capacity")
        shift = b.op("Max", [arrived_full, zero], "shift")
        attended = b.op("Sub", [self.total, shift], "attended_tokens")  # T - e
        slot = b.op("Range", [scalar(zero, "zero_scalar"), scalar(attended, "attended_scalar"),
                              scalar(one, "one_scalar")], "slot")  # (T - e,) = each attended key's position
        is_sink = b.op("Less", [slot, self.sinks], "is_sink")
        k_index = b.op("Where", [is_sink, slot, b.op("Add", [slot, shift], "slot_shifted")], "k_index")  # in k_all
        self.k_index = k_index
        q_index = b.op("Add", [b.op("Range", [scalar(zero, "zero_scalar2"), scalar(n, "n_scalar"),
                                              scalar(one, "one_scalar2")], "q_range"), past], "q_index")  # (n,)
        q_pos = b.op("Sub", [q_index, shift], "q_position")
        self.k_positions = b.op("Expand", [b.op("Unsqueeze", [slot, zero], "k_pos_row"),
                                           b.op("Concat", [batch, attended], "bt", axis=0)], "k_positions")  # (B, T-e)
        self.q_positions = b.op("Expand", [b.op("Unsqueeze", [q_pos, zero], "q_pos_row"),
                                           b.op("Concat", [batch, n], "bn", axis=0)], "q_positions")  # (B, n)
        # Mask pieces, broadcast to (B, 1, n, T - e).
        self.kj = b.op("Unsqueeze", [k_index, zero], "kj")  # (1, T-e): attended key -> its index in k_all
        self.qi = b.op("Unsqueeze", [q_index, one], "qi")  # (n, 1)
        self.kj_is_sink = b.op("Unsqueeze", [is_sink, zero], "kj_is_sink")  # (1, T-e)
        self.q_absolute = b.op("Unsqueeze", [position_ids, b.const("axes13", i64([1, 3]))], "q_absolute")  # (B,1,n,1)
        padding = b.op("Cast", [attention_mask], "padding_bool", to=ir.DataType.BOOL)  # (B, T)
        self.not_padding = b.op("Unsqueeze", [b.op("Gather", [padding, k_index], "attended_padding", axis=1),
                                              b.const("axes12", i64([1, 2]))], "not_padding")  # (B,1,1,T-e)
        self._masks: dict[Optional[int], ir.Value] = {}

    def mask(self, model_window: Optional[int]) -> ir.Value:
        if model_window not in self._masks:
            self._masks[model_window] = self._build_mask(model_window)
        return self._masks[model_window]

    def _build_mask(self, model_window: Optional[int]) -> ir.Value:
        b, tag = self.b, "full" if model_window is None else f"window{model_window}"
        causal = b.op("LessOrEqual", [self.kj, self.qi], f"{tag}/causal")  # (n, T)
        recent = b.op("Greater", [self.kj, b.op("Sub", [self.qi, self.window], f"{tag}/oldest")], f"{tag}/recent")
        kept = b.op("Or", [self.kj_is_sink, recent], f"{tag}/sink_or_recent")
        visible = b.op("And", [b.op("And", [causal, kept], f"{tag}/causal_kept"), self.not_padding], f"{tag}/unpadded")
        if model_window is not None:  # true token age < the model's own window
            index_age = b.op("Sub", [self.qi, self.kj], f"{tag}/index_age")  # (n, T)
            sink_age = b.op("Sub", [self.q_absolute, self.kj], f"{tag}/sink_age")  # (B,1,n,T)
            age = b.op("Where", [self.kj_is_sink, sink_age, index_age], f"{tag}/age")
            in_window = b.op("Less", [age, b.const(f"{tag}.size", np.array(model_window, np.int64))],
                             f"{tag}/in_model_window")
            visible = b.op("And", [visible, in_window], f"{tag}/model_window")
        return b.op("Or", [visible, b.op("Equal", [self.kj, self.qi], f"{tag}/diagonal")], f"{tag}/mask")

    def evict(self, b: NodeBuilder, everything: ir.Value, name: str) -> ir.Value:
        """k_all (B, Hkv, T, D) -> the kept cache (B, Hkv, min(T, S + W), D)."""
        return b.op("Gather", [everything, self.kept_index], f"{name}/present", axis=2)

    def attended(self, b: NodeBuilder, everything: ir.Value, name: str) -> ir.Value:
        """k_all (B, Hkv, T, D) -> the keys attention reads (B, Hkv, T - e, D)."""
        return b.op("Gather", [everything, self.k_index], f"{name}/attended", axis=2)


class StreamingAttentionPass(GraphPass):
    """Rewrites every rotary ``Attention`` of the main graph into sink + rolling-window attention (module doc)."""

    name = "streaming_attention"

    def __init__(self, options: StreamingOptions, num_heads: int, num_kv_heads: int, head_dim: int,
                 model_windows: list[Optional[int]]):
        super().__init__()
        self.options, self.model_windows = options, model_windows
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["StreamingAttentionPass"]:
        streaming, manifest = options.streaming, context.manifest
        if streaming is None:
            return None
        if manifest.streaming:
            raise StreamingConfigError(f"{context.model_dir} already streams ({manifest.streaming}); optimize the "
                                       "export without --streaming instead.")
        if applied(manifest, "contextual_sparsity"):
            raise StreamingConfigError(f"{context.model_dir} has contextual sparsity, whose decode branch attends "
                                       "over the full cache; --streaming and --sparsity-* cannot be combined yet.")
        streaming.validate(manifest.dims.max_seq_len)
        d = manifest.dims
        return cls(streaming, d.num_heads, d.num_kv_heads, d.head_dim, manifest.sliding_windows)

    def settings(self) -> dict:
        return self.options.manifest_entry()

    def record(self, manifest) -> None:
        super().record(manifest)
        manifest.set_streaming(self.options.manifest_entry())

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches = self.rewrite_graph(model.graph)  # the KV cache lives in the main graph only
        if self.matches:
            common_passes.RemoveUnusedNodesPass()(model)
            model.graph.sort()
        return ir.passes.PassResult(model, modified=self.matches > 0)

    def _sites(self, graph: ir.Graph) -> list[_Site]:
        sites = []
        for node in graph:
            if node.op_type != "Attention" or node.domain != "":
                continue
            q_rope, k_rope = (value.producer() if value is not None else None for value in node.inputs[:2])
            if not (q_rope and k_rope and q_rope.op_type == k_rope.op_type == "RotaryEmbedding"):
                raise UnsupportedArchitectureError(
                    f"{node.name}: streaming re-indexes rotary positions inside the KV cache, and this attention "
                    "has no RotaryEmbedding: the model adds learned absolute positions to the token embeddings (as "
                    "GPT-2 does), or this layer attends without positions (SmolLM3's NoPE layers); neither can be "
                    "re-indexed. Streaming supports models whose every layer is rotary (Llama, Mistral, Qwen2, "
                    "Qwen3, Granite).")
            if len(node.inputs) < 6 or node.inputs[4] is None or len(node.outputs) < 3:
                raise UnsupportedArchitectureError(f"{node.name}: expected Attention with a past/present KV cache.")
            sites.append(_Site(node, q_rope, k_rope))
        if sites and len(sites) != len(self.model_windows):
            raise UnsupportedArchitectureError(
                f"found {len(sites)} attention layers but planforge.json lists {len(self.model_windows)}.")
        return sites

    def rewrite_graph(self, graph: ir.Graph) -> int:
        sites = self._sites(graph)
        if not sites:
            return 0
        inputs = {value.name: value for value in graph.inputs}
        shared = NodeBuilder(graph, "/streaming")
        steps = _StepIndices(shared, inputs[constants.INPUT_IDS], sites[0].attention.inputs[4],
                             inputs[constants.ATTENTION_MASK], inputs[constants.POSITION_IDS], self.options)
        for window in set(self.model_windows):  # every shared node exists before the tape is inserted
            steps.mask(window)
        graph.insert_before(sites[0].attention, shared.tape.nodes)
        for layer, site in enumerate(sites):
            self._rewrite(graph, site, steps, self.model_windows[layer])
        return len(sites)

    def _heads(self, b: NodeBuilder, x: ir.Value, heads: int, name: str) -> ir.Value:
        """(B, n, heads·D) -> (B, heads, n, D)."""
        shape = b.const(f"{name}.shape", np.array([0, 0, heads, self.head_dim], np.int64))
        return b.op("Transpose", [b.op("Reshape", [x, shape], f"{name}/Reshape")], f"{name}/Transpose",
                    perm=[0, 2, 1, 3])

    def _rewrite(self, graph: ir.Graph, site: _Site, steps: _StepIndices, model_window: Optional[int]) -> None:
        att = site.attention
        _, _, v, _, past_k, past_v = att.inputs[:6]
        cos, sin = site.q_rope.inputs[1:3]
        b = NodeBuilder(graph, f"{att.name}/streaming")
        q = self._heads(b, site.q, self.num_heads, "q")
        k_all = b.op("Concat", [past_k, self._heads(b, site.k, self.num_kv_heads, "k")], "k_all", axis=2)
        v_all = b.op("Concat", [past_v, self._heads(b, v, self.num_kv_heads, "v")], "v_all", axis=2)
        q_rot = b.op("RotaryEmbedding", [q, cos, sin, steps.q_positions], "q/RotaryEmbedding",
                     **self._rope_attributes(site.q_rope))
        k_rot = b.op("RotaryEmbedding", [steps.attended(b, k_all, "key"), cos, sin, steps.k_positions],
                     "k/RotaryEmbedding", **self._rope_attributes(site.k_rope))
        attributes = {name: attr.value for name, attr in att.attributes.items()}
        y = b.op("Attention", [q_rot, k_rot, steps.attended(b, v_all, "value"), steps.mask(model_window)],
                 "Attention", **attributes)
        y = b.op("Transpose", [y], "y/Transpose", perm=[0, 2, 1, 3])
        y = b.op("Reshape", [y, b.const("y.shape", np.array([0, 0, self.num_heads * self.head_dim], np.int64))],
                 "y/Reshape")
        present_k, present_v = steps.evict(b, k_all, "key"), steps.evict(b, v_all, "value")
        ir.convenience.replace_nodes_and_values(graph, att, [att, site.q_rope, site.k_rope], b.tape.nodes,
                                                list(att.outputs[:3]), [y, present_k, present_v])

    @staticmethod
    def _rope_attributes(rope: ir.Node) -> dict:
        # 4-D inputs carry their head count in the shape; num_heads is only for 3-D inputs.
        return {name: attr.value for name, attr in rope.attributes.items() if name != "num_heads"}
