"""Finds, by structure, the quantized linears and the quantized token table the quantize passes wrote.

The lowering onto ONNX Runtime's kernels (``lower_onnxruntime``) rewrites what this
module finds. A linear is matched from its weight outwards::

    root ─► [Gather(keep, axis=-1)] ─► [Cast f32] ─► [activation QDQ] ─► MatMul ─► [Cast] ─► [Add ◄─ outliers] ─► y
                                                     Transpose(DequantizeLinear(W_q, s, block)) ─┘
    outliers: root ─► Gather(idx, axis=-1) ─► MatMul(·, W_out)

and the token table from its ``DequantizeLinear`` to its readers (the ``input_ids``
lookup and a tied LM head). Anything that does not have exactly this shape is
refused with the reason, and stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import onnx_ir as ir

from planforge import constants

QUANT_DTYPES = {ir.DataType.INT4: 4, ir.DataType.INT8: 8}


@dataclass
class LinearSite:
    """One quantized linear of the portable graph."""

    name: str  # the source module, for reports
    root: ir.Value  # the linear's input x, in the model dtype
    y: ir.Value  # its output (what consumers read), in the model dtype
    dtype: ir.DataType  # the model dtype (the quantized part computes in float32 between two Casts)
    weight: np.ndarray  # (N, Kq) int8 codes, signed
    scale: np.ndarray  # (N, G) float32
    block: int  # input rows per scale (Kq for per-channel)
    w_bits: int
    a_bits: Optional[int]  # None: weight-only
    keep: Optional[np.ndarray]  # (Kq,) kept input columns, or None for all
    outliers: Optional[np.ndarray]  # (Ko,) float input columns
    w_out: Optional[np.ndarray]  # (Ko, N) float weights of the outlier columns, model dtype
    nodes: list[ir.Node] = field(default_factory=list)  # every node of the site, removed by the rewrite

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1] + (0 if self.outliers is None else len(self.outliers))

    def group_key(self) -> tuple:
        """Linears with equal keys read the same input through the same quantizer and can share one GEMM."""
        columns = lambda a: None if a is None else a.tobytes()  # noqa: E731
        return (id(self.root), self.dtype, self.w_bits, self.a_bits, self.block, self.weight.shape[1],
                columns(self.keep), columns(self.outliers))


@dataclass
class TableSite:
    """The quantized token table and its readers."""

    dq: ir.Node
    cast: Optional[ir.Node]  # DequantizeLinear -> Cast to the model dtype (fp16 / bf16 models)
    dtype: ir.DataType  # the model dtype
    weight: np.ndarray  # (V, H) int8 codes
    scale: np.ndarray  # (V, G) float32
    block: int
    bits: int
    lookups: list[ir.Node]  # Gather(table, input_ids)
    heads: list[tuple[ir.Node, ir.Node]]  # (Transpose, MatMul) of a tied LM head


def _const(value: Optional[ir.Value]) -> Optional[np.ndarray]:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _producer(value: Optional[ir.Value], op_type: str) -> Optional[ir.Node]:
    node = None if value is None else value.producer()
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


def _only_user(value: ir.Value, op_type: str, index: Optional[int] = None) -> Optional[ir.Node]:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    use = uses[0]
    if use.node.op_type != op_type or use.node.domain != "" or (index is not None and use.idx != index):
        return None
    return use.node


def _gather_columns(node: Optional[ir.Node]) -> Optional[np.ndarray]:
    if node is None or node.attributes.get("axis") is None or node.attributes["axis"].as_int() != -1:
        return None
    return _const(node.inputs[1])


def _activation_qdq(value: ir.Value) -> Union[str, tuple[ir.Value, int, list[ir.Node]]]:
    """``Add(Mul(Sub(Clip(Floor(Add(Div(Sub(x, lo), s), ½)), 0, L), mid), s), zero)`` -> (x, bits, nodes)."""
    dq = _producer(value, "Add")
    mul = _producer(dq.inputs[0], "Mul") if dq is not None else None
    sub_mid = _producer(mul.inputs[0], "Sub") if mul is not None else None
    clip = _producer(sub_mid.inputs[0], "Clip") if sub_mid is not None else None
    floor = _producer(clip.inputs[0], "Floor") if clip is not None else None
    add_half = _producer(floor.inputs[0], "Add") if floor is not None else None
    div = _producer(add_half.inputs[0], "Div") if add_half is not None else None
    sub_lo = _producer(div.inputs[0], "Sub") if div is not None else None
    if sub_lo is None:
        return "its input is not the per-token activation quantizer the quantize pass writes"
    levels = _const(clip.inputs[2])
    if levels is None or float(levels) + 1 not in (16.0, 256.0):
        return f"activation levels {levels} are neither 4- nor 8-bit"
    x = sub_lo.inputs[0]
    nodes = _ancestors_until(value, x)
    return x, int(np.log2(float(levels) + 1)), nodes


def _ancestors_until(value: ir.Value, stop: ir.Value) -> list[ir.Node]:
    """The nodes that compute ``value`` from ``stop`` (and constants): the quantizer's own nodes."""
    seen, stack = [], [value.producer()]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack.extend(v.producer() for v in node.inputs if v is not None and v is not stop)
    return seen


def _weight(dq: ir.Node) -> Union[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """DequantizeLinear(W_q (N, Kq) INT4|INT8, s (N, G), axis=1, block) -> (codes, scale, block, bits)."""
    w, s = dq.inputs[0], dq.inputs[1] if len(dq.inputs) > 1 else None
    if w is None or w.const_value is None or w.const_value.dtype not in QUANT_DTYPES:
        return "its weight is not a constant INT4/INT8 tensor"
    if len(dq.inputs) > 2 and dq.inputs[2] is not None:
        return "its weight has a zero point (the quantize pass writes symmetric weights)"
    scale = _const(s)
    axis = dq.attributes.get("axis")
    if scale is None or scale.ndim != 2 or axis is None or axis.as_int() != 1:
        return "its weight scales are not constant per-row blocks (axis=1)"
    codes = w.const_value.numpy().astype(np.int8)
    block = dq.attributes["block_size"].as_int() if "block_size" in dq.attributes else codes.shape[1]
    return codes, scale.astype(np.float32), block, QUANT_DTYPES[w.const_value.dtype]


def match_linear(dq: ir.Node) -> Union[None, str, LinearSite]:
    """The linear whose weight ``dq`` dequantizes; None when ``dq`` is not a linear's; a reason when refused."""
    transpose = _only_user(dq.outputs[0], "Transpose")
    matmul = _only_user(transpose.outputs[0], "MatMul", index=1) if transpose is not None else None
    if matmul is None:
        return None  # the token table, or something else: not a linear
    name = matmul.name.split("/quant/")[0]
    weight = _weight(dq)
    if isinstance(weight, str):
        return f"{name}: {weight}"
    codes, scale, block, w_bits = weight
    nodes = [dq, transpose, matmul]
    a = matmul.inputs[0]
    a_bits = None
    if _producer(a, "Add") is not None:
        qdq = _activation_qdq(a)
        if isinstance(qdq, str):
            return f"{name}: {qdq}"
        a, a_bits, quantizer_nodes = qdq
        nodes += quantizer_nodes
    cast_in = _producer(a, "Cast")
    if cast_in is not None:
        nodes.append(cast_in)
        a = cast_in.inputs[0]
    keep_gather = _producer(a, "Gather")
    keep = _gather_columns(keep_gather)
    if keep_gather is not None:
        if keep is None:
            return f"{name}: its input Gather is not a constant column selection"
        nodes.append(keep_gather)
        a = keep_gather.inputs[0]
    y = matmul.outputs[0]
    cast_out = _only_user(y, "Cast")
    if (cast_in is None) != (cast_out is None):
        return f"{name}: it casts its {'input' if cast_in is not None else 'output'} only"
    dtype = ir.DataType.FLOAT
    if cast_out is not None:
        nodes.append(cast_out)
        y = cast_out.outputs[0]
        dtype = ir.DataType(cast_out.attributes["to"].as_int())
    outliers, w_out = None, None
    add = _only_user(y, "Add")
    if add is not None and keep is not None:
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        out_matmul = _producer(other, "MatMul")
        out_gather = _producer(out_matmul.inputs[0], "Gather") if out_matmul is not None else None
        if out_gather is not None and out_gather.inputs[0] is a and _const(out_matmul.inputs[1]) is not None:
            outliers, w_out = _gather_columns(out_gather), _const(out_matmul.inputs[1])
            nodes += [out_gather, out_matmul, add]
            y = add.outputs[0]
    if keep is not None and outliers is None:
        return f"{name}: it keeps {len(keep)} columns but its float outlier branch was not found"
    return LinearSite(name, a, y, dtype, codes, scale, block, w_bits, a_bits, keep, outliers, w_out, nodes)


def match_table(dq: ir.Node) -> Union[None, str, TableSite]:
    """The token table ``dq`` dequantizes, with its lookups and tied heads; None when it is no table."""
    value, cast = dq.outputs[0], None
    users = [use.node for use in value.uses()]
    if len(users) == 1 and users[0].op_type == "Cast":
        cast = users[0]
        value = cast.outputs[0]
        users = [use.node for use in value.uses()]
    lookups = [n for n in users if n.op_type == "Gather" and n.inputs[0] is value and n.inputs[1] is not None
               and n.inputs[1].name == constants.INPUT_IDS]
    if not lookups:
        return None
    heads = []
    for node in users:
        if node in lookups:
            continue
        matmul = _only_user(node.outputs[0], "MatMul", index=1) if node.op_type == "Transpose" else None
        if matmul is None:
            return f"the token table has a reader that is neither the input_ids lookup nor a tied head: {node.name}"
        heads.append((node, matmul))
    weight = _weight(dq)
    if isinstance(weight, str):
        return f"the token table: {weight}"
    codes, scale, block, bits = weight
    dtype = ir.DataType.FLOAT if cast is None else ir.DataType(cast.attributes["to"].as_int())
    return TableSite(dq, cast, dtype, codes, scale, block, bits, lookups, heads)
