"""Opset-23 ``Attention`` -> ONNX Runtime's ``GroupQueryAttention`` over a shared past/present buffer.

Per layer (``optimize --target onnxruntime``)::

    qkv ─► Split ─► RotaryEmbedding(q) ─┐
                 ├► RotaryEmbedding(k) ─┼► Attention(·, mask, past_k, past_v) ─► out, present_k, present_v
                 └► v ──────────────────┘      ▲ the 20-op causal + padding mask built from attention_mask
     => qkv ─► GroupQueryAttention(packed, past_k, past_v, seqlens_k, total_sequence_length, cos, sin,
                                   do_rotary=1) ─► out, present_k, present_v

with ``seqlens_k = Σ attention_mask - 1`` and ``total_sequence_length`` = the mask's width, built
once (ONNX Runtime GenAI's contract). Unfused q, k, v (float models) go in as three inputs, and
q/k without a ``RotaryEmbedding`` (learned positions) with ``do_rotary=0``.

Why: ``Attention`` returns ``present = concat(past, new)``, a new tensor and a copy of the whole
cache at every step, and its inputs change shape every step, so a runtime rebinds every cache
tensor per token. ``GroupQueryAttention`` writes the new token into the past buffer in place when
present and past are one buffer of ``max_seq_len`` positions: the runtime binds the cache once per
generation (docs/architecture.md, "Runtime loop"; measured in docs/results.md).

The contract changes with it (``manifest.io["past_present_share_buffer"]``): each past input is
a (batch, kv_heads, max_sequence, head_dim) buffer that holds sequence b's tokens in slots
[0, Σ mask[b]), present is the same buffer, and position_ids are those slots (the rotation happens
inside the kernel, at slot positions). So the lowering applies only where that is the model's
semantics: no attention sinks or rolling window (``--streaming``), no attention inside the
contextual-sparsity branches. Anything else keeps ``Attention``, and the report says why. A
sliding-window layer (``manifest.sliding_windows``) keeps its window as the kernel's
``local_window_size``; layers are matched to their windows in graph order, which is layer order
(each layer reads the previous one's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_ir as ir

from planforge import constants
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.manifest import Manifest

MS_DOMAIN = "com.microsoft"
# The Attention attributes the rewrite carries over; any other (softcap, is_causal, ...) keeps the layer.
KNOWN_ATTRIBUTES = {"q_num_heads", "kv_num_heads", "scale", "softcap"}
MAX_SEQUENCE = "max_sequence"  # the symbolic length of a shared cache buffer in the graph's I/O


@dataclass
class AttentionSite:
    node: ir.Node
    query: ir.Value
    key: Optional[ir.Value]  # None with a packed query
    value: Optional[ir.Value]
    cos: Optional[ir.Value]  # None: no rotary (do_rotary=0)
    sin: Optional[ir.Value]
    interleaved: int
    window: Optional[int] = None  # the layer's sliding window (manifest.sliding_windows), in tokens


def _int_attr(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _rotary(value: ir.Value, position_ids: ir.Value) -> Optional[ir.Node]:
    """The full-width ``RotaryEmbedding`` at the graph's position_ids that produced ``value``, if any."""
    node = value.producer()
    if node is None or node.op_type != "RotaryEmbedding" or node.domain != "":
        return None
    if _int_attr(node, "rotary_embedding_dim") != 0 or len(node.inputs) < 4 or node.inputs[3] is not position_ids:
        return None
    if any(v is None or v.const_value is None for v in node.inputs[1:3]):
        return None
    return node


def _packed(q: ir.Value, k: ir.Value, v: ir.Value, q_size: int, kv_size: int) -> Optional[ir.Value]:
    """The one tensor q, k and v were split from, in that order and those widths, if they were."""
    split = q.producer()
    if split is None or split.op_type != "Split" or k.producer() is not split or v.producer() is not split:
        return None
    if list(split.outputs) != [q, k, v] or _int_attr(split, "axis") not in (-1, 2):
        return None
    sizes = split.inputs[1] if len(split.inputs) > 1 else None
    if sizes is None or sizes.const_value is None:
        return None
    if sizes.const_value.numpy().tolist() != [q_size, kv_size, kv_size]:
        return None
    return split.inputs[0]


def _graph_output(value: ir.Value) -> Optional[tuple[ir.Value, Optional[ir.Node]]]:
    """(the graph output ``value`` is, and the ``Identity`` that names it, if any), or None."""
    if value.is_graph_output():
        return value, None
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.op_type == "Identity" and uses[0].node.outputs[0].is_graph_output():
        return uses[0].node.outputs[0], uses[0].node
    return None


def why_not_lowerable(manifest: Manifest, streaming: bool = False) -> Optional[str]:
    """The model-level reason the shared-buffer contract cannot hold (``streaming``: this optimize adds the
    streaming cache), or None."""
    if streaming or manifest.streaming:
        return "the streaming cache (sinks + rolling window) keeps its own Attention"
    return None


def match(node: ir.Node, graph: ir.Graph, head_dim: int, window: Optional[int] = None) -> AttentionSite | str:
    """The rewrite of one main-graph ``Attention`` node of a layer with sliding ``window`` (or none), or why it
    stays."""
    extra = set(node.attributes) - KNOWN_ATTRIBUTES
    if extra:
        return f"{node.name}: attributes {sorted(extra)} have no GroupQueryAttention mapping"
    if len(node.inputs) != 6 or any(v is None for v in node.inputs) or len(node.outputs) < 3:
        return f"{node.name}: not the exported form (q, k, v, mask, past key, past value)"
    past = node.inputs[4:6]
    if any(not v.is_graph_input() for v in past) or any(_graph_output(o) is None for o in node.outputs[1:3]):
        return f"{node.name}: its cache is not the graph's past/present I/O"
    positions = next((v for v in graph.inputs if v.name == constants.POSITION_IDS), None)
    q, k, v = node.inputs[:3]
    q_rot, k_rot = _rotary(q, positions), _rotary(k, positions)
    if (q_rot is None) != (k_rot is None):
        return f"{node.name}: only one of q and k is rotated"
    cos = sin = None
    interleaved = 0
    if q_rot is not None:
        if q_rot.inputs[1] is not k_rot.inputs[1] or q_rot.inputs[2] is not k_rot.inputs[2]:
            return f"{node.name}: q and k rotate with different tables"
        interleaved = _int_attr(q_rot, "interleaved")
        if _int_attr(k_rot, "interleaved") != interleaved:
            return f"{node.name}: q and k rotate with different layouts"
        cos, sin = q_rot.inputs[1], q_rot.inputs[2]
        if cos.const_value.shape[-1] * 2 != head_dim:
            return f"{node.name}: a partial rotary ({cos.const_value.shape[-1] * 2} of {head_dim} dims)"
        q, k = q_rot.inputs[0], k_rot.inputs[0]
    heads, kv_heads = _int_attr(node, "q_num_heads"), _int_attr(node, "kv_num_heads")
    packed = _packed(q, k, v, heads * head_dim, kv_heads * head_dim)
    if packed is not None:
        return AttentionSite(node, packed, None, None, cos, sin, interleaved, window)
    return AttentionSite(node, q, k, v, cos, sin, interleaved, window)


def sequence_lengths(graph: ir.Graph, mask: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(seqlens_k (B,) int32 = Σ mask - 1, total_sequence_length () int32 = the mask's width), once per graph."""
    b = NodeBuilder(graph, "gqa")
    total_tokens = b.op("ReduceSum", [mask, b.const("axes", np.array([1], np.int64))], "ReduceSum", keepdims=0)
    last = b.op("Sub", [total_tokens, b.const("one", np.array(1, np.int64))], "last_slot")
    seqlens = b.op("Cast", [last], "seqlens_k", to=ir.DataType.INT32)
    width = b.op("Squeeze", [b.op("Shape", [mask], "Shape", start=1, end=2)], "width")
    total = b.op("Cast", [width], "total_sequence_length", to=ir.DataType.INT32)
    graph.insert_before(graph[0], b.nodes)
    return seqlens, total


def rewrite(graph: ir.Graph, site: AttentionSite, seqlens: ir.Value, total: ir.Value) -> None:
    node = site.node
    attributes = {"num_heads": _int_attr(node, "q_num_heads"), "kv_num_heads": _int_attr(node, "kv_num_heads"),
                  "do_rotary": int(site.cos is not None), "rotary_interleaved": site.interleaved}
    for name in ("scale", "softcap"):  # softcap: c·tanh(scores / c) before the softmax, in both ops
        if name in node.attributes:
            attributes[name] = node.attributes[name].as_float()
    if site.window is not None:
        # the exported mask shows a query the keys at positions (q - W, q], W of them with itself, and so does the
        # kernel's local window of W (tested against the portable graph past the window)
        attributes["local_window_size"] = site.window
    b = NodeBuilder(graph, node.name)
    outputs = b.op("GroupQueryAttention", [site.query, site.key, site.value, node.inputs[4], node.inputs[5],
                                           seqlens, total, site.cos, site.sin],
                   "GroupQueryAttention", num_outputs=3, _domain=MS_DOMAIN, **attributes)
    graph.insert_before(node, b.nodes)
    out = node.outputs[0]
    outputs[0].type, outputs[0].shape = out.type, out.shape
    out.replace_all_uses_with(outputs[0])
    for old, new in zip(node.outputs[1:3], outputs[1:]):
        # The kernel's present output is the graph output itself (no naming Identity after it): only a value
        # ONNX Runtime binds to the caller's buffer can be the past buffer, which is what makes it shared.
        final, identity = _graph_output(old)
        new.type, new.shape = final.type, final.shape
        final.replace_all_uses_with(new, replace_graph_outputs=True)
        if identity is not None:
            graph.remove(identity, safe=True)
        new.name = final.name
    graph.remove(node, safe=True)


def share_buffers(graph: ir.Graph) -> None:
    """The past/present I/O as one buffer each: the same symbolic length, ``max_sequence``."""
    for value in [*graph.inputs, *graph.outputs]:
        if value.name.startswith(("past_key_values.", "present.")) and value.shape is not None:
            dims = list(value.shape)
            dims[2] = MAX_SEQUENCE
            value.shape = ir.Shape(dims)


def record_contract(manifest: Manifest) -> None:
    """The shared-buffer I/O in ``manifest.io`` (docs/onnx_contract.md, "Shared cache buffers")."""
    io = manifest.io
    for entry in [*io["inputs"], *io["outputs"]]:
        if entry["name"].startswith(("past_key_values.", "present.")):
            entry["shape"][2] = MAX_SEQUENCE
    io["past_present_share_buffer"] = True
    io["notes"] = ("past and present of a layer are one (batch, kv_heads, max_sequence, head_dim) buffer, written "
                   "in place; sequence b's tokens are slots [0, sum(attention_mask[b])) and its position_ids "
                   "are those slots; a step is a prefill from an empty cache without padding, or one token per "
                   "sequence")
