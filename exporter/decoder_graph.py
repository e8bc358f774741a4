"""Builds the canonical planforge decoder graph from an adapter's weights.

Per layer the graph is (names are the source model's module names)::

    x ─► Norm ─► q_proj ─► RotaryEmbedding ─┐
             ├─► k_proj ─► RotaryEmbedding ─┤   past_key_values.i.key|value
             └─► v_proj ────────────────────┤        │
                                            ▼        ▼
                            Attention(q, k, v, mask, past_k, past_v) ─► present.i.key|value
                                            │
    x ◄─ Add ◄─ o_proj ◄────────────────────┘
    x ─► Norm ─► gate_proj ─► act ─► Mul ◄─ up_proj ◄─ Norm
    x ◄─ Add ◄─ down_proj ◄──────────┘

(``norm_position="post"``, OPT-350m: each Norm moves after its residual Add, x = Norm(x + f(x)); a
narrow token table adds ``project_in`` after the lookup and ``project_out`` before the head.)

Every linear is ``MatMul(x, W)`` (+ ``Add(bias)``) with ``W`` stored as
[in_features, out_features] under ``constants.linear_weight(module)``. The
attention mask (causal, padding and sliding window in one boolean tensor) is
computed once per distinct window and shared by the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto

from planforge import constants
from planforge.exporter.graph_builder import ONNX_DTYPES, GraphBuilder
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights, Linear, Norm


def tensor_to_numpy(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if dtype == "fp32":
        return tensor.float().numpy()
    if dtype == "fp16":
        return tensor.half().numpy()
    return tensor.to(torch.bfloat16).view(torch.uint16).numpy().view(ml_dtypes.bfloat16)


@dataclass
class ExportedGraph:
    model: onnx.ModelProto
    linears: list[dict]  # one record per linear: layer, role, module, weight, bias


class _AttentionMasks:
    """Boolean [B, 1, S, P+S] masks: key j is visible to query i when it is not padding,
    not in the future and inside the window; every query sees itself, so a padding
    row never softmaxes over nothing."""

    def __init__(self, b: GraphBuilder, input_ids: str, attention_mask: str):
        self.b = b
        seq = b.op("Shape", [input_ids], name="/mask/seq_len", start=1, end=2)
        total = b.op("Shape", [attention_mask], name="/mask/total_len", start=1, end=2)
        past = b.op("Sub", [total, seq], name="/mask/past_len")
        zero, one = b.const_i64(0, "/mask/zero"), b.const_i64(1, "/mask/one")
        squeeze = lambda v, n: b.op("Squeeze", [v], name=n)  # noqa: E731
        q_range = b.op("Range", [zero, squeeze(seq, "/mask/seq_scalar"), one], name="/mask/q_range")
        q_abs = b.op("Add", [q_range, past], name="/mask/q_positions")
        self.q_pos = b.op("Unsqueeze", [q_abs, b.const_i64([1], "/mask/axis1")], name="/mask/q_column")
        k_range = b.op("Range", [zero, squeeze(total, "/mask/total_scalar"), one], name="/mask/k_range")
        self.k_pos = b.op("Unsqueeze", [k_range, b.const_i64([0], "/mask/axis0")], name="/mask/k_row")
        as_bool = b.op("Cast", [attention_mask], name="/mask/padding_bool", to=TensorProto.BOOL)
        self.not_padding = b.op("Unsqueeze", [as_bool, b.const_i64([1, 2], "/mask/axes12")], name="/mask/padding")
        self.causal = b.op("LessOrEqual", [self.k_pos, self.q_pos], name="/mask/causal")
        self.diagonal = b.op("Equal", [self.k_pos, self.q_pos], name="/mask/diagonal")
        self._cache: dict[Optional[int], str] = {}

    def get(self, window: Optional[int]) -> str:
        if window not in self._cache:
            self._cache[window] = self._build(window)
        return self._cache[window]

    def _build(self, window: Optional[int]) -> str:
        b, tag = self.b, "full" if window is None else f"window{window}"
        visible = self.causal
        if window is not None:
            oldest = b.op("Sub", [self.q_pos, b.const_i64(window, f"/mask/{tag}/size")], name=f"/mask/{tag}/oldest")
            in_window = b.op("Greater", [self.k_pos, oldest], name=f"/mask/{tag}/in_window")
            visible = b.op("And", [visible, in_window], name=f"/mask/{tag}/causal_window")
        visible = b.op("And", [visible, self.not_padding], name=f"/mask/{tag}/unpadded")
        return b.op("Or", [visible, self.diagonal], name=f"/mask/{tag}")


class _DecoderGraphWriter:
    def __init__(self, dims: DecoderDims, style: DecoderStyle, dtype: str):
        self.dims, self.style, self.dtype = dims, style, dtype
        self.elem = ONNX_DTYPES[dtype]
        self.b = GraphBuilder("planforge_decoder")
        self.linears: list[dict] = []

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        return self.b.initializer(name, tensor_to_numpy(tensor, self.dtype))

    def linear(self, layer: Optional[int], lin: Linear, x: str) -> str:
        w = self.weight(constants.linear_weight(lin.module), lin.weight.t())
        y = self.b.op("MatMul", [x, w], name=f"{lin.module}/MatMul")
        bias = None
        if lin.bias is not None:
            bias = self.weight(constants.linear_bias(lin.module), lin.bias)
            y = self.b.op("Add", [y, bias], name=f"{lin.module}/BiasAdd")
        out_f, in_f = lin.weight.shape
        self.linears.append(dict(layer=layer, role=lin.role, module=lin.module, weight=w, bias=bias,
                                 in_features=int(in_f), out_features=int(out_f)))
        return y

    def norm(self, norm: Norm, x: str) -> str:
        scale = self.weight(f"{norm.module}.weight", norm.weight)
        if self.style.norm == "rms":
            return self.b.op("RMSNormalization", [x, scale], name=f"{norm.module}/RMSNormalization",
                             axis=-1, epsilon=self.style.norm_eps, stash_type=1)
        bias = self.weight(f"{norm.module}.bias", norm.bias)
        return self.b.op("LayerNormalization", [x, scale, bias], name=f"{norm.module}/LayerNormalization",
                         axis=-1, epsilon=self.style.norm_eps, stash_type=1)

    def head_norm(self, norm: Optional[Norm], x: str, heads: int) -> str:
        """RMSNorm over each head's D values of x (B, S, H*D), as Qwen3 normalizes q and k before rotary."""
        if norm is None:
            return x
        b, d = self.b, self.dims.head_dim
        split = b.op("Reshape", [x, b.const_i64([0, 0, heads, d], f"{norm.module}/heads")], name=f"{norm.module}/split")
        normed = b.op("RMSNormalization", [split, self.weight(f"{norm.module}.weight", norm.weight)],
                      name=f"{norm.module}/RMSNormalization", axis=-1, epsilon=self.style.norm_eps, stash_type=1)
        return b.op("Reshape", [normed, b.const_i64([0, 0, heads * d], f"{norm.module}/merged")],
                    name=f"{norm.module}/merge")

    def scaled(self, x: str, factor: float, name: str, op: str = "Mul") -> str:
        """x * factor (or x / factor), in the model dtype; x itself when the factor is 1."""
        if factor == 1.0:
            return x
        return self.b.op(op, [x, self.weight(f"{name}.factor", torch.tensor(float(factor)))], name=name)

    def activation(self, x: str, module: str) -> str:
        kind = self.style.activation
        if kind == "silu":
            sig = self.b.op("Sigmoid", [x], name=f"{module}/act/Sigmoid")
            return self.b.op("Mul", [x, sig], name=f"{module}/act/Mul")
        if kind == "relu":
            return self.b.op("Relu", [x], name=f"{module}/act/Relu")
        approximate = "tanh" if kind == "gelu_tanh" else "none"
        return self.b.op("Gelu", [x], name=f"{module}/act/Gelu", approximate=approximate)


def build_decoder_graph(
    dims: DecoderDims,
    style: DecoderStyle,
    weights: DecoderWeights,
    dtype: str,
    producer_version: str,
    on_layer: Callable[[int], None] = lambda i: None,
) -> ExportedGraph:
    w = _DecoderGraphWriter(dims, style, dtype)
    b, elem, d = w.b, w.elem, dims
    input_ids = b.input(constants.INPUT_IDS, TensorProto.INT64, ["batch", "sequence"])
    attention_mask = b.input(constants.ATTENTION_MASK, TensorProto.INT64, ["batch", "total_sequence"])
    position_ids = b.input(constants.POSITION_IDS, TensorProto.INT64, ["batch", "sequence"])
    kv_shape = ["batch", d.num_kv_heads, "past_sequence", d.head_dim]
    pasts = [(b.input(constants.past_key(i), elem, kv_shape), b.input(constants.past_value(i), elem, kv_shape))
             for i in range(d.num_layers)]

    masks = _AttentionMasks(b, input_ids, attention_mask)
    embed = w.weight(f"{weights.embed_module}.weight", weights.embed_tokens)
    x = b.op("Gather", [embed, input_ids], name=f"{weights.embed_module}/Gather")  # (B, S, H)
    x = w.scaled(x, style.embedding_scale, f"{weights.embed_module}/scale")
    if weights.project_in is not None:  # (B, S, E) -> (B, S, H)
        x = w.linear(None, weights.project_in, x)
    if style.positions == "learned":
        table = w.weight(f"{weights.position_module}.weight", weights.position_embeddings)
        pos = b.op("Gather", [table, position_ids], name=f"{weights.position_module}/Gather")
        x = b.op("Add", [x, pos], name=f"{weights.position_module}/Add")
    else:
        tables = {None: (w.weight("rotary.cos_cache", weights.rotary_cos),  # (max_seq_len, D/2)
                         w.weight("rotary.sin_cache", weights.rotary_sin))}
        if weights.rotary_long is not None:  # longrope: the long factors once this step reaches position n
            long_cos, long_sin, n = weights.rotary_long
            top = b.op("ReduceMax", [position_ids], name="/rotary/max_position", keepdims=0)
            use_long = b.op("GreaterOrEqual", [top, b.const_i64(n, "/rotary/original_positions")],
                            name="/rotary/use_long")
            tables[None] = tuple(
                b.op("Where", [use_long, w.weight(f"rotary.long.{kind}_cache", table), short], name=f"/rotary/{kind}")
                for kind, table, short in (("cos", long_cos, tables[None][0]), ("sin", long_sin, tables[None][1])))
        for key, (layer_cos, layer_sin) in weights.layer_rotary.items():
            tables[key] = (w.weight(f"rotary.{key}.cos_cache", layer_cos), w.weight(f"rotary.{key}.sin_cache", layer_sin))

    post = style.norm_position == "post"
    for i, layer in enumerate(weights.layers):
        h = x if post else w.norm(layer.attn_norm, x)
        q, k, v = (w.linear(i, lin, h) for lin in (layer.q_proj, layer.k_proj, layer.v_proj))
        q, k = w.head_norm(layer.q_norm, q, d.num_heads), w.head_norm(layer.k_norm, k, d.num_kv_heads)
        if style.positions == "rotary" and (style.rotary_layers is None or style.rotary_layers[i]):
            cos, sin = tables[layer.rotary_table]
            q = b.op("RotaryEmbedding", [q, cos, sin, position_ids], name=f"{layer.q_proj.module}/RotaryEmbedding",
                     num_heads=d.num_heads, interleaved=0)
            k = b.op("RotaryEmbedding", [k, cos, sin, position_ids], name=f"{layer.k_proj.module}/RotaryEmbedding",
                     num_heads=d.num_kv_heads, interleaved=0)
        scale = style.attention_scales[i] or 1.0 / math.sqrt(d.head_dim)
        softcap = {} if style.attention_softcap is None else {"softcap": float(style.attention_softcap)}
        attn, present_k, present_v = b.op(
            "Attention", [q, k, v, masks.get(style.sliding_windows[i]), *pasts[i]],
            name=f"{layer.attention_module}/Attention", num_outputs=3,
            q_num_heads=d.num_heads, kv_num_heads=d.num_kv_heads, scale=float(scale), **softcap)
        attn_out = w.linear(i, layer.o_proj, attn)
        attn_out = w.norm(layer.post_attn_norm, attn_out) if layer.post_attn_norm is not None else attn_out
        attn_out = w.scaled(attn_out, style.residual_scale, f"{layer.attention_module}/scale")
        x = b.op("Add", [x, attn_out], name=f"{layer.attention_module}/residual")
        x = w.norm(layer.attn_norm, x) if post else x
        h = x if post else w.norm(layer.mlp_norm, x)
        if style.gated_mlp:
            gate = w.activation(w.linear(i, layer.gate_proj, h), layer.gate_proj.module)
            hidden = b.op("Mul", [gate, w.linear(i, layer.up_proj, h)], name=f"{layer.up_proj.module}/gate_mul")
        else:
            hidden = w.activation(w.linear(i, layer.up_proj, h), layer.up_proj.module)
        mlp_out = w.linear(i, layer.down_proj, hidden)
        mlp_out = w.norm(layer.post_mlp_norm, mlp_out) if layer.post_mlp_norm is not None else mlp_out
        mlp_out = w.scaled(mlp_out, style.residual_scale, f"{layer.down_proj.module}/scale")
        x = b.op("Add", [x, mlp_out], name=f"{layer.down_proj.module}/residual")
        x = w.norm(layer.mlp_norm, x) if post else x
        b.output(present_k, constants.present_key(i), elem, ["batch", d.num_kv_heads, "total_sequence", d.head_dim])
        b.output(present_v, constants.present_value(i), elem, ["batch", d.num_kv_heads, "total_sequence", d.head_dim])
        on_layer(i)

    x = w.norm(weights.final_norm, x) if weights.final_norm is not None else x
    if weights.project_out is not None:  # (B, S, H) -> (B, S, E), the head's width
        x = w.linear(None, weights.project_out, x)
    if weights.tied_lm_head:
        head = b.op("Transpose", [embed], name=f"{weights.lm_head.module}/tied_weight", perm=[1, 0])
        logits = b.op("MatMul", [x, head], name=f"{weights.lm_head.module}/MatMul")
    else:
        logits = w.linear(None, weights.lm_head, x)
    logits = w.scaled(logits, style.logits_divisor, "/logits/scale", op="Div")
    if style.logits_softcap is not None:  # c * tanh(logits / c)
        capped = b.op("Tanh", [w.scaled(logits, style.logits_softcap, "/logits/softcap_in", op="Div")],
                      name="/logits/softcap")
        logits = w.scaled(capped, style.logits_softcap, "/logits/softcap_out")
    if elem != TensorProto.FLOAT:
        logits = b.op("Cast", [logits], name="/logits/Cast", to=TensorProto.FLOAT)
    b.output(logits, constants.LOGITS, TensorProto.FLOAT, ["batch", "sequence", d.vocab_size])
    # Graph outputs must come first in a fixed order: logits, then present.i.key|value.
    b.outputs.insert(0, b.outputs.pop())
    return ExportedGraph(model=b.model(producer_version), linears=w.linears)
