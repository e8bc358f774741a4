"""Portable graph -> planforge plugin ops (``build --target torch``; TensorRT parses the same file).

Two rules (``pattern`` / ``check`` with a reason / ``rewrite``): QUIK linears
(``quik_rule.py``: W4A4/W8A8 QDQ -> ``QuikQuantize`` + ``QuikMatMul``), and attention with
its KV cache, per decoder layer::

    Attention(q, k, v, mask, past_k, past_v) ─► y, present_k, present_v        (concat cache)
 => k_cache', v_cache' = KVCacheUpdate(k_cache, v_cache, K(k), K(v), past_lengths)  (in place, aliased)
    y = If(S == 1,
           then: FusedAttentionDecode(q, k_cache', v_cache', min(past_lengths + 1, C)),
           else: FusedAttentionPrefill(q, K(k), K(v); window))

with ``K`` the (B, S, H·D) -> (B, H, S, D) view. The cache becomes a preallocated
buffer of C slots per layer: C = max_seq_len with ``slot = position`` (linear), or
C = the layer's sliding window with ``slot = position mod C`` (rolling, sinks 0), so
the decode op's "every valid entry" is the window. Prefill reads only the new
tokens, so it runs from an empty cache; the backend steps a continuation over a
filled cache token by token, and a left-padded prefill row by row (the fused ops
take no padding mask). ``mask`` and the ``past/present`` I/O go away; the new I/O
contract (``planforge.json`` ``io``, docs/onnx_contract.md) is versioned.

Every node this rule creates in domain ``planforge`` carries ``plugin_namespace``
and ``plugin_version`` for TensorRT's plugin lookup, and the model imports the
versioned ``planforge`` opset. onnxscript's rewriter matches and replaces node
patterns but cannot change a graph's inputs and outputs, which this rule must;
it keeps that rewriter's pattern / check / rewrite split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from planforge import constants
from planforge.errors import LoweringError
from planforge.graph_passes.base import GraphPass, PassContext
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.plugin_nodes import (LayerCache, cache_update, drop_presents, plugin, replace_with_if,
                                                 to_heads)
from planforge.graph_passes.quik_rule import QuikLinearRule
from planforge.graph_passes.sparse_rule import RowLayout, SparseLayerRule, SparseLayerSite
from planforge.graph_passes.streaming_rule import StreamingAttentionRule, StreamingPositions, StreamingSite
from planforge.manifest import Manifest
from planforge.plugins import DOMAIN
from planforge.plugins.registry import opset_version, plugin_op

FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclass
class AttentionSite:
    node: ir.Node
    layer: int
    num_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    window: Optional[int]
    past: tuple[ir.Value, ir.Value]
    presents: list[ir.Node]  # the Identity nodes that make present_k/v graph outputs

    @property
    def capacity_rolling(self) -> bool:
        return self.window is not None


class AttentionKVCacheRule:
    """Opset-23 ``Attention`` with a past/present cache -> ``KVCacheUpdate`` + fused prefill/decode."""

    def check(self, node: ir.Node, layer: int, manifest: Manifest, graph: ir.Graph,
              if_node: Optional[ir.Node] = None) -> Union[AttentionSite, str]:
        """``if_node``: the sparsity If whose dense branch holds ``node`` (its presents leave through the If)."""
        where = f"{node.name} ({node.op_type})"
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        q, k, v, mask, past_k, past_v = inputs[:6]
        if past_k is None or past_v is None or past_k not in graph.inputs or past_v not in graph.inputs:
            return f"{where}: no past key/value graph inputs (a streaming graph); not lowered yet"
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        if attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) or attrs.get("qk_matmul_output_mode", 0):
            return f"{where}: is_causal, softcap or qk_matmul_output_mode is set; the fused ops have none"
        if past_k.dtype not in FLOATS:  # the cache input is typed; intermediates need not be
            return f"{where}: dtype {past_k.dtype} (the fused ops take float32, float16, bfloat16)"
        if "q_num_heads" not in attrs or (q.shape is not None and len(q.shape) != 3):
            return f"{where}: q is not (B, S, H*D) with q_num_heads; only the exporter's 3-D form is lowered"
        present_values = list(node.outputs[1:3])
        if if_node is not None:
            branch_outputs = list(if_node.attributes["else_branch"].value.outputs)
            if any(out not in branch_outputs for out in present_values):
                return f"{where}: present key/value are not outputs of its sparsity If"
            present_values = [if_node.outputs[branch_outputs.index(out)] for out in present_values]
        presents = [use.node for out in present_values for use in out.uses()]
        if len(presents) != 2 or any(n.op_type != "Identity" or n.outputs[0] not in graph.outputs for n in presents):
            return f"{where}: present key/value are read inside the graph; only graph outputs are expected"
        d = manifest.dims
        return AttentionSite(node, layer, attrs["q_num_heads"], attrs["kv_num_heads"], d.head_dim,
                             float(attrs.get("scale") or 0.0), manifest.sliding_windows[layer], (past_k, past_v),
                             presents)

    def rewrite(self, graph: ir.Graph, site: AttentionSite, shared: "SharedValues") -> tuple[ir.Value, ir.Value]:
        """Rewrites one layer; returns its new cache inputs (the in-place buffers)."""
        node = site.node
        b = NodeBuilder(graph, f"{node.name}/planforge")
        cache = self.write_cache(b, site, shared)
        decode = NodeBuilder(graph, f"{node.name}/planforge/decode")
        y_decode = self.decode(decode, site, to_heads(decode, node.inputs[0], site.num_heads, site.head_dim, "q"),
                               cache, shared.seq_lens(b, cache.capacity))
        prefill = NodeBuilder(graph, f"{node.name}/planforge/prefill")
        y_prefill = self.prefill(prefill, site, to_heads(prefill, node.inputs[0], site.num_heads, site.head_dim, "q"),
                                 cache)
        replace_with_if(graph, node, b, shared.is_decode(b), decode, y_decode, prefill, y_prefill)
        drop_presents(graph, site.presents, cache)
        graph.remove(node, safe=True)
        return cache.inputs

    @staticmethod
    def write_cache(b: NodeBuilder, site: AttentionSite, shared: "SharedValues") -> LayerCache:
        """The layer's preallocated cache and its in-place ``KVCacheUpdate`` with this step's K/V."""
        k, v = site.node.inputs[1], site.node.inputs[2]
        kh, vh = (to_heads(b, x, site.kv_heads, site.head_dim, tag) for x, tag in ((k, "k"), (v, "v")))
        capacity = site.window or shared.manifest.dims.max_seq_len
        return cache_update(b, site.layer, site.past[0].dtype, (site.kv_heads, capacity, site.head_dim), kh, vh,
                            shared.past_lengths, rolling=site.capacity_rolling)

    @staticmethod
    def decode(b: NodeBuilder, site: AttentionSite, qh: ir.Value, cache: LayerCache, seq_lens: ir.Value):
        """One token: (B, Hq, 1, D) queries over the updated cache -> (B, 1, Hq*D)."""
        q1 = b.op("Squeeze", [qh, b.const("seq_axis", np.array([2], np.int64))], "q/Squeeze")
        attended = plugin(b, "FusedAttentionDecode", [q1, cache.k, cache.v, seq_lens], "FusedAttentionDecode",
                          scale=site.scale)
        return b.op("Reshape", [attended, b.const("rows", np.array([0, 1, -1], np.int64))], "y")

    @staticmethod
    def prefill(b: NodeBuilder, site: AttentionSite, qh: ir.Value, cache: LayerCache):
        """A prompt from an empty cache: causal attention over its own K/V -> (B, S, Hq*D)."""
        attended = plugin(b, "FusedAttentionPrefill", [qh, cache.k_new, cache.v_new], "FusedAttentionPrefill",
                          scale=site.scale, window=site.window or 0, sinks=0)
        return b.op("Reshape", [b.op("Transpose", [attended], "y/Transpose", perm=[0, 2, 1, 3]),
                                b.const("rows", np.array([0, 0, -1], np.int64))], "y")


class SharedValues:
    """Values every layer's rewrite reads, made once: past_lengths, S == 1, and min(past_lengths + 1, C)."""

    def __init__(self, graph: ir.Graph, manifest: Manifest):
        self.graph, self.manifest = graph, manifest
        self.past_lengths = ir.Value(name=constants.PAST_LENGTHS, type=ir.TensorType(ir.DataType.INT32),
                                     shape=ir.Shape(["batch"]))
        self._is_decode: Optional[ir.Value] = None
        self._lengths: dict[int, ir.Value] = {}

    def is_decode(self, b: NodeBuilder) -> ir.Value:
        if self._is_decode is None:
            input_ids = next(v for v in self.graph.inputs if v.name == constants.INPUT_IDS)
            seq = b.op("Shape", [input_ids], "/planforge/seq_len", start=1, end=2)
            self._is_decode = b.op("Equal", [seq, b.const("/planforge/one", np.array([1], np.int64))],
                                   "/planforge/is_decode")
        return self._is_decode

    def seq_lens(self, b: NodeBuilder, capacity: int) -> ir.Value:
        """Valid entries after this step's write (decode): min(past_lengths + 1, C), int32 (B,)."""
        if capacity not in self._lengths:
            grown = b.op("Add", [self.past_lengths, b.const("/planforge/one_i32", np.array(1, np.int32))],
                         f"/planforge/lengths_plus_one_c{capacity}")
            self._lengths[capacity] = b.op("Min", [grown, b.const(f"/planforge/capacity_{capacity}",
                                                                  np.array(capacity, np.int32))],
                                           f"/planforge/seq_lens_c{capacity}")
        return self._lengths[capacity]


class LowerPluginsPass(GraphPass):
    """Lowers the portable graph onto planforge's plugin ops (module doc); ``--target torch``."""

    name = "lower_plugins"
    expected = True

    def __init__(self, manifest: Manifest, allow_partial: bool = False, portable_model: str = ""):
        super().__init__()
        self.manifest, self.allow_partial, self.portable_model = manifest, allow_partial, portable_model
        self.layers: list[dict] = []
        self.ops: dict[str, int] = {}

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["LowerPluginsPass"]:
        if options.target not in ("torch", "tensorrt"):  # TensorRT parses the same plugin graph
            return None
        return cls(context.manifest, options.allow_partial, str(context.model_dir.resolve()))

    def settings(self) -> dict:
        return {"plugin_ops": self.ops, "allow_partial": self.allow_partial, "refused": self.refusals}

    def rewrite_graph(self, graph: ir.Graph) -> int:
        """Attention in the main graph or in a sparsity If's dense branch, the sparsity Ifs, then QUIK linears."""
        attentions = [n for n in ir.traversal.RecursiveGraphIterator(graph) if n.op_type == "Attention"]
        sparse = self._sparse_sites(graph, attentions)
        sites = self._attention_sites(graph, attentions, sparse)
        self.refusals += self._quik_groups(graph)[1]
        if self.refusals and not self.allow_partial:
            raise LoweringError(f"cannot lower to planforge ops: {summarize(self.refusals)}. Pass --allow-partial "
                                "to keep these nodes as standard ops (run by the torch backend).")
        count = 0
        if sites:
            shared, rule, rows = SharedValues(graph, self.manifest), AttentionKVCacheRule(), RowLayout(graph)
            positions = StreamingPositions(graph, shared.past_lengths)
            caches = {site.layer: StreamingAttentionRule().rewrite(graph, site, shared, positions)
                      if isinstance(site, StreamingSite) else rule.rewrite(graph, site, shared)
                      for site in sites if site.node.graph is graph}
            for site in sparse:
                cache = SparseLayerRule().rewrite(graph, site, shared, rule, rows)
                if cache is not None:
                    caches[site.attention.layer] = cache.inputs
                self._used(*(["SparseHeadsAttention"] if site.heads else []) + (["SparseMLP"] if site.mlp else []))
                count += 1
            if rows.nodes:
                graph.insert_before(graph[0], rows.nodes)
            self.layers = [self._cache_layout(site) for site in sites]
            self._replace_inputs(graph, sites, [caches[s.layer] for s in sites], shared)
            self._used("KVCacheUpdate", "FusedAttentionPrefill", "FusedAttentionDecode")
            count += len(sites)
        position = {node: i for i, node in enumerate(graph)}
        for group in self._quik_groups(graph)[0]:  # found again: o_proj now reads the rewritten attention
            anchor = min((node for site in group for node in site.nodes), key=position.__getitem__)
            QuikLinearRule().rewrite(graph, group, anchor, plugin)
            self._used("QuikQuantize", "QuikMatMul")
            count += len(group)
        graph.sort()
        return count

    def _cache_layout(self, site) -> dict:
        """The layer's entry of the I/O contract's ``kv_cache``: capacity, rolling, sinks."""
        if isinstance(site, StreamingSite):
            return {"capacity": site.capacity, "rolling": True, "sinks": site.sinks}
        return {"capacity": site.window or self.manifest.dims.max_seq_len, "rolling": site.window is not None,
                "sinks": 0}

    def _sparse_sites(self, graph: ir.Graph, attentions: list[ir.Node]) -> list[SparseLayerSite]:
        """The contextual-sparsity pass's Ifs on the main graph (refusals are recorded)."""
        rule, sites = SparseLayerRule(), []
        check = lambda node, if_node: AttentionKVCacheRule().check(  # noqa: E731
            node, attentions.index(node), self.manifest, graph, if_node)
        for node in graph:
            if node.op_type == "If" and node.domain == "":
                site = rule.check(node, check)
                if isinstance(site, str):
                    self.refusals.append(site)
                else:
                    sites.append(site)
                    self.refusals += site.refusals
        return sites

    def _attention_sites(self, graph: ir.Graph, attentions: list[ir.Node],
                         sparse: list[SparseLayerSite]) -> list[Union[AttentionSite, StreamingSite]]:
        """Every layer's site, or none: the cache contract is one for all layers (refusals are recorded)."""
        in_branches = {site.attention.node: site.attention for site in sparse if site.attention is not None}
        rule, sites, refused = AttentionKVCacheRule(), [], []
        for layer, node in enumerate(attentions):
            if node.graph is graph:
                site = rule.check(node, layer, self.manifest, graph)
                if isinstance(site, str) and self.manifest.streaming:
                    site = StreamingAttentionRule().check(node, layer, self.manifest, graph)
            else:
                site = in_branches.get(node, f"{node.name} (Attention): inside an If branch the sparsity rule did not "
                                             "match; not lowered")
            (refused if isinstance(site, str) else sites).append(site)
        if not refused and len(sites) != self.manifest.dims.num_layers:
            refused.append(f"the graph: {len(sites)} attention sites for {self.manifest.dims.num_layers} layers")
        self.refusals += [r for r in refused if r not in self.refusals]
        return [] if refused else sites

    @staticmethod
    def _quik_groups(graph: ir.Graph) -> tuple[list[list], list[str]]:
        """QUIK sites grouped by shared input and quantizer, and the refusals."""
        rule, groups, refused = QuikLinearRule(), {}, []
        for node in graph:
            if node.op_type == "DequantizeLinear" and node.domain == "":
                site = rule.check(node)
                if isinstance(site, str):
                    refused.append(site)
                elif site is not None:
                    groups.setdefault(site.group_key(), []).append(site)
        return list(groups.values()), refused

    def _used(self, *op_types: str) -> None:
        for op_type in op_types:
            schema = plugin_op(op_type).schema
            self.ops[schema.qualified_name] = schema.version

    @staticmethod
    def _replace_inputs(graph: ir.Graph, sites, caches, shared: SharedValues) -> None:
        past = {v for site in sites for v in site.past}
        kept = [v for v in graph.inputs if v not in past]
        graph.inputs.clear()
        graph.inputs.extend(kept + [shared.past_lengths] + [v for pair in caches for v in pair])

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches = self.rewrite_graph(model.graph)
        if self.matches:
            model.opset_imports[DOMAIN] = opset_version()
            ir.passes.common.RemoveUnusedNodesPass()(model)  # the mask builder
            mask = [v for v in model.graph.inputs if v.name == constants.ATTENTION_MASK and not v.uses()]
            for value in mask:
                model.graph.inputs.remove(value)
        return ir.passes.PassResult(model, modified=self.matches > 0)

    def record(self, manifest: Manifest) -> None:
        super().record(manifest)
        manifest.target = "torch"
        manifest.plugin_ops = dict(self.ops)
        manifest.source["portable_model"] = self.portable_model  # the oracle compare and polygraphy run use
        if self.layers:
            manifest.io = lowered_io_contract(manifest, self.layers)


def summarize(refusals: list[str]) -> str:
    """Refusals with the same reason once, counted, naming the first node: "model.layers.0/Attention: why (x8)"."""
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for refusal in refusals:
        node, _, why = refusal.partition(": ")
        first.setdefault(why, node)
        counts[why] = counts.get(why, 0) + 1
    return "; ".join(f"{first[why]}: {why}" + (f" (and {n - 1} more like it)" if n > 1 else "")
                     for why, n in counts.items())


def lowered_io_contract(manifest: Manifest, layers: list[dict]) -> dict:
    """The lowered graph's I/O (docs/onnx_contract.md, "Lowered graph"), versioned by LOWERED_IO_VERSION."""
    d, dtype = manifest.dims, manifest.dtype
    inputs = [
        {"name": constants.INPUT_IDS, "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": constants.POSITION_IDS, "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": constants.PAST_LENGTHS, "dtype": "int32", "shape": ["batch"]},
    ]
    outputs = [{"name": constants.LOGITS, "dtype": "fp32", "shape": ["batch", "sequence", d.vocab_size]}]
    for i, layer in enumerate(layers):
        shape = ["batch", d.num_kv_heads, layer["capacity"], d.head_dim]
        for name_in, name_out in ((constants.cache_key, constants.cache_key_out),
                                  (constants.cache_value, constants.cache_value_out)):
            inputs.append({"name": name_in(i), "dtype": dtype, "shape": shape})
            outputs.append({"name": name_out(i), "dtype": dtype, "shape": shape, "aliases": name_in(i)})
    return {"version": constants.LOWERED_IO_VERSION, "inputs": inputs, "outputs": outputs,
            "kv_cache": [{"layer": i, **layer} for i, layer in enumerate(layers)],
            "notes": "caches are preallocated and updated in place (outputs alias inputs); past_lengths[b] = valid "
                     "entries of sequence b before the step = slot of its first new token (rolling: mod capacity); "
                     "a step is either a prefill from an empty cache (past_lengths 0, no padding) or one token per "
                     "sequence"}
