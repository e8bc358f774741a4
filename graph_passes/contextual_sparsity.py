"""Contextual sparsity (ShadowLLM single predictor, DejaVu per-token timing) as one onnx-ir graph pass.

After the pass, per layer ``l`` (layer 0: only its MLP part; its attention stays dense because
its output is the predictor's input)::

    layer 0:  ... ─► o_proj ─► o0 ─► Add(residual) ─► ...
                           │
                           └─► predictor: z = (o0 - mean) / std
                                 heads   = fc2(relu(fc1(z)))  ─► Reshape [B,S,L-1,H] ─► TopK(k_h) ─► head_idx
                                 neurons = fc2(relu(fc1(z)))  ─► Reshape [B,S,L,F]   ─► TopK(k_n) ─► neuron_idx

    h = Norm(x) ─► k_proj ─► RoPE ─┐   (K/V of every kv head, always: the cache stays complete)
                └► v_proj ──────────┤
                                    ▼
    If (sequence_length == 1)                                     outputs: x', present.l.key|value
    ├─ then (decode, only the selected slices are computed; per batch row, weights gathered [B,k,...]):
    │    present = Concat(past, k|v)
    │    rows = head_idx*hd + [0..hd)          Wq_rows = Gather(Wq^T, rows)    q = Wq_rows @ h^T  (+bq)
    │    q ─► RoPE(4-D, the selected heads)    K_sel|V_sel = GatherND(present, head_idx // group, batch_dims=1)
    │    p = Softmax(Where(mask, scale·K_sel q, lowest))    a = p V_sel
    │    o = a @ Gather(Wo, rows)  (+bo)       x_mid = x + o ;  h2 = Norm(x_mid)
    │    [g u] = Gather([Wg^T Wu^T], neuron_idx) @ h2^T (+b)    y = act(g)·u    down = y^T @ Gather(Wd, neuron_idx)
    │    x' = x_mid + down (+bd)
    └─ else (prefill / teacher forcing: each token keeps its own selection, so it is computed densely
         and masked, exactly the masked-model semantics):
         q_proj, RoPE, Attention (its present K/V), attn·head_mask ─► o_proj ─► ...
         act(gate)·up·neuron_mask ─► down_proj

The masks are ``ScatterElements`` of ones at the selected indices (k = max(1, int(n(1-F)+0.5)) per
layer). A fraction of 0 leaves that part (attention or MLP) untouched. Nodes are found by
structure (Attention nodes, the MatMul after them, the MLP MatMuls by role from the manifest's
linears), never by name. The decode branch gathers rows of ``Wq^T`` and of ``[Wg^T Wu^T]`` (gate and up
rows of a neuron side by side, one Gather + one GEMV for both) — new initializers named
``{weight}.sparse_rows`` — and of the original ``Wo`` / ``Wd``; the dense branch keeps
the original MatMuls, so a later quantization pass rewrites those and the gathered slices stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ml_dtypes
import numpy as np
import onnx_ir as ir

from planforge.errors import InvalidSparsityError, PredictorError
from planforge.graph_passes.base import GraphPass, PassContext, ancestors, descendants
from planforge.graph_passes.node_builder import BranchBuilder

# Ops allowed between the gate/up outputs and the down_proj input (they must be elementwise).
ELEMENTWISE = {"Sigmoid", "Mul", "Relu", "Gelu", "Tanh", "Add", "Sub", "Div", "Erf", "Pow", "Softplus",
               "HardSigmoid", "HardSwish", "Cast", "Identity", "Neg", "Exp"}
# Attention-23 attributes the decode branch reproduces; any other non-default one is refused.
ATTENTION_ATTRS = {"q_num_heads", "kv_num_heads", "scale", "qk_matmul_output_mode"}


def top_k(n: int, sparsity: float) -> int:
    """Units kept of ``n`` at ``sparsity`` (the rule shared with planforge.sparsity.masking.top_k_mask)."""
    return max(1, int(n * (1.0 - sparsity) + 0.5))


@dataclass(frozen=True)
class SparsityOptions:
    heads: float = 0.0  # fraction of q heads skipped per layer (layers >= 1)
    mlp: float = 0.0  # fraction of MLP neurons skipped per layer (all layers)
    predictor: Optional[Path] = None

    def validate(self) -> None:
        for flag, value in (("--sparsity-heads", self.heads), ("--sparsity-mlp", self.mlp)):
            if not (0.0 <= value < 1.0):
                raise InvalidSparsityError(f"{flag} {value}: a sparsity is the fraction of units skipped, "
                                           "in [0, 1) (e.g. 0.5).")
        if self.heads == 0 and self.mlp == 0:
            raise InvalidSparsityError("--predictor without a sparsity: give --sparsity-heads and/or --sparsity-mlp "
                                       "(e.g. 0.5), or drop --predictor.")
        if self.predictor is None:
            raise InvalidSparsityError("--sparsity-heads/--sparsity-mlp need a predictor: --predictor FILE "
                                       "(train one with `planforge sparsity train-predictor`).")

    def settings(self, predictor) -> dict:
        h = predictor.header
        return {"heads": self.heads, "mlp": self.mlp, "predictor": str(self.predictor), "kind": h.kind,
                "criterion": h.criterion, "head_hidden": h.head_hidden, "neuron_hidden": h.neuron_hidden,
                "timing": "per_token", "input": h.input, "layer0_heads": "dense", "kv_cache": "complete"}


@dataclass
class _Linear:
    matmul: ir.Node
    weight: ir.Value
    bias: Optional[ir.Value]
    bias_add: Optional[ir.Node]
    out: ir.Value  # after the bias

    @property
    def nodes(self) -> list[ir.Node]:
        return [self.matmul] + ([self.bias_add] if self.bias_add is not None else [])


@dataclass
class _Layer:
    index: int
    attention: ir.Node
    q: _Linear
    q_rotary: Optional[ir.Node]
    o: _Linear
    x_mid: ir.Value  # residual stream after attention
    mlp: dict  # role -> _Linear (gate_proj optional)
    middle: list = field(default_factory=list)  # elementwise nodes from gate/up outputs to the down input
    x_out: Optional[ir.Value] = None
    region: list = field(default_factory=list)


class ContextualSparsityPass(GraphPass):
    """Inserts the predictor and one ``If(sequence_length == 1)`` per rewritten layer (see module doc)."""

    name = "contextual_sparsity"

    def __init__(self, options: SparsityOptions, predictor, linears: list[dict], dims):
        super().__init__()
        if predictor.header.kind != "single":
            raise PredictorError(
                f"{options.predictor} is a {predictor.header.kind} predictor; the graph pass supports the single "
                "(ShadowLLM) predictor only, which reads layer 0's attention output. Train one with "
                "`planforge sparsity train-predictor --kind single`.")
        predictor.check_matches(dims)
        self.options, self.predictor, self.dims = options, predictor, dims
        self.records = {lin["weight"]: lin for lin in linears}

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["ContextualSparsityPass"]:
        """Runs first: its decode branch gathers float weight slices; a quantization pass after it rewrites the rest."""
        sparsity, manifest = options.sparsity, context.manifest
        if sparsity is None:
            return None
        sparsity.validate()
        done = [entry.get("name") for entry in manifest.passes]
        if done:
            raise InvalidSparsityError(
                f"{context.model_dir} was already optimized ({', '.join(done)}); contextual sparsity needs the float "
                "export: run `planforge optimize` on the directory written by `planforge export`, with --quant and "
                "--sparsity-* in the same call.")
        if options.streaming is not None:
            raise InvalidSparsityError("--streaming and --sparsity-* cannot be combined yet (the sparse decode "
                                       "branch attends over the full cache); use one of them.")
        from planforge.sparsity.predictor import Predictor

        return cls(sparsity, Predictor.load(sparsity.predictor), manifest.linears, manifest.dims)

    def settings(self) -> dict:
        return self.options.settings(self.predictor)

    # ----------------------------------------------------------------------------------- matching
    def _linear_at(self, matmul: ir.Node) -> Optional[_Linear]:
        if matmul is None or matmul.op_type != "MatMul" or matmul.domain != "":
            return None
        weight = matmul.inputs[1]
        record = self.records.get(weight.name) if weight is not None else None
        if weight is None or weight.const_value is None or record is None:
            return None
        out, bias, bias_add = matmul.outputs[0], None, None
        if record.get("bias"):
            uses = [u.node for u in out.uses()]
            adds = [n for n in uses if n.op_type == "Add" and any(v is not None and v.name == record["bias"]
                                                                    for v in n.inputs)]
            if len(uses) != 1 or len(adds) != 1:
                return None
            bias_add = adds[0]
            bias = next(v for v in bias_add.inputs if v.name == record["bias"])
            out = bias_add.outputs[0]
        return _Linear(matmul, weight, bias, bias_add, out)

    def _linear_by_role(self, graph: ir.Graph, layer: int, role: str) -> Optional[_Linear]:
        for name, record in self.records.items():
            if record["layer"] == layer and record["role"] == role:
                value = graph.initializers.get(name)
                if value is None:
                    return None
                matmuls = [u.node for u in value.uses() if u.node.op_type == "MatMul" and u.idx == 1
                           and u.node.graph is graph]
                return self._linear_at(matmuls[0]) if len(matmuls) == 1 else None
        return None

    def _match_layer(self, graph: ir.Graph, index: int, attention: ir.Node) -> Optional[_Layer]:
        where = f"layer {index} ({attention.name})"
        extra = {a for a in attention.attributes if a not in ATTENTION_ATTRS}
        extra = {a for a in extra if attention.attributes[a].value not in (0, 0.0)}
        if extra or len(attention.inputs) < 6 or attention.inputs[4] is None or len(attention.outputs) < 3:
            self.refuse(f"{where}: Attention with attributes {sorted(extra)} or without past/present K/V")
            return None
        if "kv_num_heads" not in attention.attributes:
            self.refuse(f"{where}: Attention takes 4-D Q/K/V; the pass expects the exporter's 3-D form")
            return None
        q_in, rotary = attention.inputs[0], None
        if q_in.producer() is not None and q_in.producer().op_type == "RotaryEmbedding":
            rotary = q_in.producer()
            q_in = rotary.inputs[0]
        producer = q_in.producer()
        if producer is not None and producer.op_type == "Reshape" and any(
                n.op_type == "RMSNormalization" for n in ancestors([producer]) - ancestors([attention.inputs[1].producer()])
                if n is not None):
            self.refuse(f"{where}: Q is normalized per head before rotary (q_norm, as in Qwen3), which the decode "
                        "branch does not reproduce yet")
            return None
        if producer is not None and producer.op_type == "Add":  # q bias
            producer = next((v.producer() for v in producer.inputs if v.producer() is not None
                             and v.producer().op_type == "MatMul"), None)
        q = self._linear_at(producer)
        if q is None or q.out is not q_in or self.records[q.weight.name]["role"] != "q_proj":
            self.refuse(f"{where}: Q is not RoPE(q_proj(x)) of a listed linear")
            return None
        uses = list(attention.outputs[0].uses())
        o = self._linear_at(uses[0].node) if len(uses) == 1 and uses[0].idx == 0 else None
        if o is None or self.records[o.weight.name]["role"] != "o_proj":
            self.refuse(f"{where}: the attention output does not feed o_proj alone")
            return None
        residual = [u.node for u in o.out.uses()]
        if len(residual) == 1 and residual[0].op_type == "Mul":
            self.refuse(f"{where}: the residual branches are scaled (residual_multiplier, as in Granite), which the "
                        "decode branch does not reproduce yet")
            return None
        if len(residual) != 1 or residual[0].op_type != "Add":
            self.refuse(f"{where}: o_proj's output does not feed one residual Add")
            return None
        mlp = {role: self._linear_by_role(graph, index, role) for role in ("gate_proj", "up_proj", "down_proj")}
        if mlp["gate_proj"] is None:
            mlp.pop("gate_proj")
        if mlp["up_proj"] is None or mlp["down_proj"] is None:
            self.refuse(f"{where}: MLP linears up_proj/down_proj not found as MatMuls")
            return None
        layer = _Layer(index, attention, q, rotary, o, residual[0].outputs[0], mlp)
        down = mlp["down_proj"]
        after = [u.node for u in down.out.uses()]
        if len(after) != 1 or after[0].op_type != "Add":
            self.refuse(f"{where}: down_proj's output does not feed one residual Add")
            return None
        layer.x_out = after[0].outputs[0]
        starts = {mlp[r].out for r in mlp if r != "down_proj"}
        hidden_producer = down.matmul.inputs[0].producer()
        between = ancestors([hidden_producer]) & descendants(starts)
        layer.middle = [n for n in graph if n in between]
        if not layer.middle or any(n.op_type not in ELEMENTWISE for n in layer.middle):
            self.refuse(f"{where}: the MLP activation is not elementwise "
                        f"({sorted({n.op_type for n in layer.middle})})")
            return None
        return layer

    # ---------------------------------------------------------------------------------- rewriting
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        if self.matches == 0 and self.refusals:  # asked for sparsity: a dense output would be a silent no-op
            raise InvalidSparsityError("contextual sparsity cannot be applied to this model: "
                                       + "; ".join(sorted(set(self.refusals))[:2]) + ".")
        return result

    def rewrite_graph(self, graph: ir.Graph) -> int:
        attentions = [n for n in graph if n.op_type == "Attention" and n.domain == ""]
        if not attentions:
            return 0
        if len(attentions) != self.dims.num_layers:
            self.refuse(f"{graph.name}: {len(attentions)} Attention nodes for {self.dims.num_layers} layers")
            return 0
        layers = [self._match_layer(graph, i, a) for i, a in enumerate(attentions)]
        if any(layer is None for layer in layers):
            return 0
        for layer in layers:
            if self.records[layer.q.weight.name]["layer"] != layer.index:
                self.refuse(f"Attention #{layer.index} reads the q_proj of layer "
                            f"{self.records[layer.q.weight.name]['layer']}")
                return 0
        heads_on, mlp_on = self.options.heads > 0, self.options.mlp > 0
        for layer in layers:  # regions from the untouched graph
            attn = layer.attention
            if layer.index == 0 or not heads_on:
                stop = [layer.x_mid.producer()]
            else:
                stop = [layer.q.matmul.inputs[0].producer(), *(v.producer() for v in attn.inputs[1:] if v is not None)]
            inside = ancestors([layer.x_out.producer()]) - ancestors([n for n in stop if n is not None])
            layer.region = [n for n in graph if n in inside]
        rewrite = [layer for layer in layers if (heads_on and layer.index > 0) or mlp_on]
        if not rewrite:
            return 0
        head_idx, neuron_idx, cond, pre_nodes = self._predictor(graph, layers[0])
        graph.insert_after(layers[0].o.nodes[-1], pre_nodes)
        for layer in rewrite:
            self._rewrite_layer(graph, layer, cond, head_idx if layer.index > 0 else None, neuron_idx)
        graph.sort()
        return len(rewrite)

    def _predictor(self, graph: ir.Graph, layer0: _Layer):
        """Predictor nodes on layer 0's attention output -> (head indices, neuron indices, is_decode, nodes)."""
        b = BranchBuilder(graph, "/sparsity/predictor")
        t, d = self.predictor.tensors, self.dims
        L, H, F = d.num_layers, d.num_heads, d.intermediate_size
        x = layer0.o.out
        if layer0.o.weight.const_value.dtype != ir.DataType.FLOAT:
            x = b.op("Cast", [x], "Cast", to=ir.DataType.FLOAT)
        z = b.op("Div", [b.op("Sub", [x, b.const("input_mean", t["input_mean"])], "Sub"),
                         b.const("input_std", t["input_std"])], "normalize")

        def scorer(prefix: str, rows: slice, units: int, layers: int, k: int):
            w1 = b.const(f"{prefix}.fc1.weight", t[f"{prefix}.fc1.weight"].T)  # stored [in, out]
            hidden = b.op("MatMul", [z, w1], f"{prefix}/fc1")
            hidden = b.op("Add", [hidden, b.const(f"{prefix}.fc1.bias", t[f"{prefix}.fc1.bias"])], f"{prefix}/fc1_bias")
            hidden = b.op("Relu", [hidden], f"{prefix}/Relu")
            w2, b2 = t[f"{prefix}.fc2.weight"][rows], t[f"{prefix}.fc2.bias"][rows]
            scores = b.op("Add", [b.op("MatMul", [hidden, b.const(f"{prefix}.fc2.weight", w2.T)], f"{prefix}/fc2"),
                                  b.const(f"{prefix}.fc2.bias", b2)], f"{prefix}/fc2_bias")
            scores = b.op("Reshape", [scores, b.const(f"{prefix}.shape", np.array([0, 0, layers, units]))],
                          f"{prefix}/Reshape")
            _, idx = b.op("TopK", [scores, b.const(f"{prefix}.k", np.array([k]))], f"{prefix}/TopK",
                          num_outputs=2, axis=-1, largest=1, sorted=0)  # the order is never used
            return idx  # (B, S, layers, k)

        head_idx = neuron_idx = None
        if self.options.heads > 0 and L > 1:
            head_idx = scorer("heads", slice(H, L * H), H, L - 1, top_k(H, self.options.heads))
        if self.options.mlp > 0:
            neuron_idx = scorer("neurons", slice(0, L * F), F, L, top_k(F, self.options.mlp))
        seq = b.op("Shape", [layer0.o.out], "seq_len", start=1, end=2)
        cond = b.op("Squeeze", [b.op("Equal", [seq, b.const("one", np.array([1]))], "is_decode_1d")], "is_decode")
        return head_idx, neuron_idx, cond, b.nodes

    def _rewrite_layer(self, graph: ir.Graph, layer: _Layer, cond: ir.Value, head_idx, neuron_idx) -> None:
        prefix = f"/sparsity/layer{layer.index}"
        region = set(layer.region)
        outputs = [v for n in layer.region for v in n.outputs
                   if v.is_graph_output() or any(u.node not in region for u in v.uses())]
        attention_nodes = set(layer.q.nodes + ([layer.q_rotary] if layer.q_rotary else []) + [layer.attention]
                              + layer.o.nodes)
        mlp_nodes = set(layer.middle) | {n for lin in layer.mlp.values() for n in lin.nodes}
        sparse_heads = head_idx is not None and layer.attention in region
        sparse_mlp = neuron_idx is not None

        # then: decode
        b = BranchBuilder(graph, f"{prefix}/decode")
        vmap: dict = {}
        if sparse_heads:
            vmap.update(self._decode_attention(b, layer, head_idx))
        for node in layer.region:
            if sparse_heads and node in attention_nodes:
                continue
            if sparse_mlp and node in mlp_nodes:
                if layer.mlp["down_proj"].out not in vmap:
                    vmap[layer.mlp["down_proj"].out] = self._decode_mlp(b, layer, neuron_idx, vmap)
                continue
            b.clone(node, vmap)
        then_graph = ir.Graph([], [vmap[v] for v in outputs], nodes=b.nodes, name=f"{prefix}/decode")

        # else: dense, masked per token
        b = BranchBuilder(graph, f"{prefix}/dense")
        vmap = {}
        masked = {}
        if sparse_heads:
            masked[layer.attention.outputs[0]] = ("heads", head_idx, layer.index - 1, self.dims.num_heads)
        if sparse_mlp:
            masked[layer.mlp["down_proj"].matmul.inputs[0]] = ("neurons", neuron_idx, layer.index,
                                                               self.dims.intermediate_size)
        for node in layer.region:
            b.clone(node, vmap)
            for out in node.outputs:
                if out in masked:
                    vmap[out] = self._apply_mask(b, vmap[out], *masked[out], dtype=layer.o.weight.const_value.dtype)
        else_graph = ir.Graph([], [vmap[v] for v in outputs], nodes=b.nodes, name=f"{prefix}/dense")

        if_node = ir.Node("", "If", [cond], [ir.AttrGraph("then_branch", then_graph),
                                             ir.AttrGraph("else_branch", else_graph)],
                          num_outputs=len(outputs), name=f"{prefix}/If")
        for old, new in zip(outputs, if_node.outputs):
            new.name, new.type, new.shape = f"{prefix}/If/{old.name}", old.type, old.shape
        graph.insert_before(layer.region[0], if_node)
        ir.convenience.replace_all_uses_with(outputs, list(if_node.outputs))
        graph.remove(layer.region, safe=True)

    def _apply_mask(self, b: BranchBuilder, value: ir.Value, kind: str, indices: ir.Value, layer: int, units: int,
                    dtype: ir.DataType):
        """value (B, S, units*w) in ``dtype`` -> the unselected units' slices zeroed (mask from the top-k indices)."""
        np_dtype = dtype.numpy()
        idx = b.op("Gather", [indices, b.const(f"{kind}.layer{layer}", np.array(layer))], f"{kind}/Gather", axis=2)
        shape = b.op("Shape", [idx], f"{kind}/idx_shape")
        zeros_shape = b.op("Concat", [b.op("Shape", [idx], f"{kind}/batch_seq", start=0, end=2),
                                      b.const(f"{kind}.units", np.array([units]))], f"{kind}/zeros_shape", axis=0)
        zeros = b.op("ConstantOfShape", [zeros_shape], f"{kind}/zeros", value=ir.tensor(np.zeros(1, np_dtype)))
        ones = b.op("ConstantOfShape", [shape], f"{kind}/ones", value=ir.tensor(np.ones(1, np_dtype)))
        mask = b.op("ScatterElements", [zeros, idx, ones], f"{kind}/mask", axis=2)  # (B, S, units)
        if kind == "neurons":
            return b.op("Mul", [value, mask], f"{kind}/Mul")
        hd = self.dims.head_dim
        split = b.op("Reshape", [value, b.const("heads.split", np.array([0, 0, units, hd]))], "heads/split")
        mask4 = b.op("Unsqueeze", [mask, b.const("heads.axis", np.array([-1]))], "heads/mask4")
        return b.op("Reshape", [b.op("Mul", [split, mask4], "heads/Mul"),
                                b.const("heads.merge", np.array([0, 0, units * hd]))], "heads/merge")

    def _decode_attention(self, b: BranchBuilder, layer: _Layer, head_idx: ir.Value) -> dict:
        """Selected heads only, S == 1 -> {o_proj output, present K, present V}: their replacements."""
        d = self.dims
        hd, group = d.head_dim, d.num_heads // d.num_kv_heads
        attn = layer.attention
        q_in, k, v, mask, past_k, past_v = attn.inputs[:6]
        # present K/V: every kv head, always (Attention-23 concatenates past and new the same way).
        def present(new, past, tag):
            split = b.op("Reshape", [new, b.const("kv.split", np.array([0, 0, d.num_kv_heads, hd]))], f"{tag}/split")
            heads = b.op("Transpose", [split], f"{tag}/Transpose", perm=[0, 2, 1, 3])
            return b.op("Concat", [past, heads], f"{tag}/Concat", axis=2)
        pk, pv = present(k, past_k, "present_key"), present(v, past_v, "present_value")

        idx = b.op("Gather", [head_idx, b.const("layer", np.array(layer.index - 1))], "heads/Gather", axis=2)
        idx = b.op("Reshape", [idx, b.const("flat2", np.array([0, -1]))], "heads/idx")  # (B, kh)
        rows = b.op("Add", [b.op("Mul", [b.op("Unsqueeze", [idx, b.const("last", np.array([-1]))], "rows/Unsqueeze"),
                                         b.const("hd", np.array(hd))], "rows/Mul"),
                            b.const("arange_hd", np.arange(hd))], "rows/Add")
        rows = b.op("Reshape", [rows, b.const("flat2_rows", np.array([0, -1]))], "rows")  # (B, kh*hd)
        h = layer.q.matmul.inputs[0]  # (B, 1, d)
        h_col = b.op("Reshape", [h, b.const("col", np.array([0, -1, 1]))], "h/column")  # (B, d, 1)
        wq = b.const(f"{layer.q.weight.name}.sparse_rows", np.ascontiguousarray(layer.q.weight.const_value.numpy().T),
                     raw_name=True)
        q = b.op("MatMul", [b.op("Gather", [wq, rows], "q/Gather", axis=0), h_col], "q/MatMul")  # (B, kh*hd, 1)
        if layer.q.bias is not None:
            bq = b.op("Unsqueeze", [b.op("Gather", [layer.q.bias, rows], "q/bias_Gather", axis=0),
                                    b.const("last_b", np.array([-1]))], "q/bias")
            q = b.op("Add", [q, bq], "q/BiasAdd")
        q = b.op("Reshape", [q, b.const("q4", np.array([0, -1, 1, hd]))], "q/heads")  # (B, kh, 1, hd)
        if layer.q_rotary is not None:
            rot = layer.q_rotary
            attrs = {name: a.value for name, a in rot.attributes.items() if name != "num_heads"}
            q = b.op("RotaryEmbedding", [q, *rot.inputs[1:]], "q/RotaryEmbedding", **attrs)
        kv_idx = idx if group == 1 else b.op("Div", [idx, b.const("group", np.array(group))], "kv/head")
        kv_idx = b.op("Unsqueeze", [kv_idx, b.const("last_kv", np.array([-1]))], "kv/index")  # (B, kh, 1)
        k_sel = b.op("GatherND", [pk, kv_idx], "k/GatherND", batch_dims=1)  # (B, kh, T, hd)
        v_sel = b.op("GatherND", [pv, kv_idx], "v/GatherND", batch_dims=1)
        scale = attn.attributes["scale"].value if "scale" in attn.attributes else 1.0 / np.sqrt(hd)
        dtype = layer.o.weight.const_value.dtype.numpy()
        s = b.op("MatMul", [k_sel, b.op("Reshape", [q, b.const("qcol", np.array([0, 0, -1, 1]))], "q/column")],
                 "scores/MatMul")  # (B, kh, T, 1)
        s = b.op("Reshape", [s, b.const("srow", np.array([0, 0, 1, -1]))], "scores/row")  # (B, kh, 1, T)
        s = b.op("Mul", [s, b.const("scale", np.array(scale, dtype))], "scores/scale")
        lowest = ml_dtypes.finfo(dtype).min  # numpy's finfo does not know bfloat16 (ml_dtypes' does, and the rest)
        s = b.op("Where", [mask, s, b.const("lowest", np.array(lowest, dtype))], "scores/mask")
        p = b.op("Softmax", [s], "Softmax", axis=-1)
        a = b.op("MatMul", [p, v_sel], "probs/MatMul")  # (B, kh, 1, hd)
        a = b.op("Reshape", [a, b.const("arow", np.array([0, 1, -1]))], "attn/row")  # (B, 1, kh*hd)
        o = b.op("MatMul", [a, b.op("Gather", [layer.o.weight, rows], "o/Gather", axis=0)], "o/MatMul")
        if layer.o.bias is not None:
            o = b.op("Add", [o, layer.o.bias], "o/BiasAdd")
        return {layer.o.out: o, attn.outputs[1]: pk, attn.outputs[2]: pv}

    def _decode_mlp(self, b: BranchBuilder, layer: _Layer, neuron_idx: ir.Value, vmap: dict) -> ir.Value:
        """Selected neurons only, S == 1 -> down_proj's output (B, 1, d)."""
        idx = b.op("Gather", [neuron_idx, b.const("layer_n", np.array(layer.index))], "neurons/Gather", axis=2)
        idx = b.op("Reshape", [idx, b.const("flat2n", np.array([0, -1]))], "neurons/idx")  # (B, kn)
        first = layer.mlp["up_proj"].matmul.inputs[0]
        h = vmap.get(first, first)
        h_col = b.op("Reshape", [h, b.const("mlp_col", np.array([0, -1, 1]))], "mlp/h_column")  # (B, d, 1)
        # gate and up rows of one neuron side by side ([F, n_in * d]): one Gather and one GEMV for both.
        lins = [layer.mlp[role] for role in ("gate_proj", "up_proj") if role in layer.mlp]
        rows = np.stack([lin.weight.const_value.numpy().T for lin in lins], axis=1)  # (F, n_in, d)
        w = b.const(f"{lins[0].weight.name}.sparse_rows", rows.reshape(rows.shape[0], -1), raw_name=True)
        gathered = b.op("Reshape", [b.op("Gather", [w, idx], "gate_up/Gather", axis=0),
                                    b.const("per_row", np.array([0, -1, rows.shape[2]]))], "gate_up/rows")
        y = b.op("MatMul", [gathered, h_col], "gate_up/MatMul")  # (B, kn * n_in, 1)
        y = b.op("Reshape", [y, b.const("split_shape", np.array([0, -1, len(lins)]))], "gate_up/pairs")
        parts = [y] if len(lins) == 1 else b.op("Split", [y, b.const("split", np.ones(len(lins), np.int64))],
                                                 "gate_up/Split", num_outputs=len(lins), axis=2)
        for lin, part in zip(lins, parts):  # (B, kn, 1) each
            if lin.bias is not None:
                bias = b.op("Unsqueeze", [b.op("Gather", [lin.bias, idx], f"{lin.weight.name}/bias_Gather", axis=0),
                                          b.const("last_n", np.array([-1]))], f"{lin.weight.name}/bias")
                part = b.op("Add", [part, bias], f"{lin.weight.name}/BiasAdd")
            vmap[lin.out] = part
        for node in layer.middle:
            b.clone(node, vmap)
        down = layer.mlp["down_proj"]
        hidden = vmap[down.matmul.inputs[0]]
        row = b.op("Reshape", [hidden, b.const("hrow", np.array([0, 1, -1]))], "down/row")  # (B, 1, kn)
        y = b.op("MatMul", [row, b.op("Gather", [down.weight, idx], "down/Gather", axis=0)], "down/MatMul")
        if down.bias is not None:
            y = b.op("Add", [y, down.bias], "down/BiasAdd")
        return y
