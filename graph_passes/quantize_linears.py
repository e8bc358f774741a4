"""``MatMul(x, W) -> QDQ linear``: QUIK W4A4 with float outlier columns, and W8A8 / W4A16, in standard ONNX.

One linear after the rewrite (K = Kq + Ko input columns, N outputs;
the Casts are absent for an fp32 model; W_q is INT8 for 8-bit layers)::

    x (B,S,K) ─┬─► Gather(keep, axis=-1) ─► Cast f32 ─► xq (B,S,Kq)
               │      lo = ReduceMin(xq, -1)   hi = ReduceMax(xq, -1)                  (B,S,1)
               │      s  = (hi - lo) / (2^a - 1)   (1 where hi == lo)   zero = lo + 2^(a-1)·s
               │      q  = Clip(Floor((xq - lo) / s + 0.5), 0, 2^a - 1) - 2^(a-1)    signed a-bit ints
               │      x̂  = q·s + zero  ─────────────────────────────────────────────────┐
               │                                                                        ▼
               │   W_q [N,Kq] INT4 ─► DequantizeLinear(s_w [N,Kq/g], block g) ─► Transpose ─► MatMul ─► Cast
               │                                                                                   │
               └─► Gather(outliers, axis=-1) ─► MatMul(·, W_out [Ko,N] model dtype) ──────────► Add ─► y

Activations are asymmetric per token (computed online), weights symmetric per
output channel (g = Kq; or per block of g input rows for weight-only W4A16, which has no
activation quantization and no outliers). This is exactly the W4A4 GEMM plugin's
math (``plugins/w4a4_gemm/reference.py``), so a lowering pass can replace the
pattern. Outlier columns are the Ko inputs with the largest calibration max|x|
(QUIK); their weights stay in the model dtype and, with GPTQ, absorb the 4-bit
part's rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import ml_dtypes
import numpy as np
import onnx_ir as ir

from planforge import constants
from planforge.graph_passes import gptq as gptq_lib
from planforge.graph_passes import quantizer
from planforge.graph_passes.base import GraphPass, PassContext, applied
from planforge.graph_passes.calibration import LinearStats, calibrate, calibration_samples
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.schemes import CalibrationError, LinearFormat, QuantizationError, QuantOptions, format_for

INT_TYPES = {4: ml_dtypes.int4, 8: np.int8}
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)  # weights a quantization pass accepts


@dataclass
class QuantizedLinear:
    """A linear's quantized weights: rows ``keep`` as integers, rows ``outliers`` in float."""

    fmt: LinearFormat
    keep: np.ndarray  # (Kq,) int64 input columns, ascending
    outliers: np.ndarray  # (Ko,) int64 input columns, ascending
    q: np.ndarray  # (Kq, N) int8
    scale: np.ndarray  # (G, N) float32
    w_out: np.ndarray  # (Ko, N) float32

    def dequantized(self) -> np.ndarray:
        """The weight [K, N] the quantized graph multiplies by (float32)."""
        kq, n = self.q.shape
        w = np.zeros((kq + len(self.outliers), n), np.float32)
        w[self.keep] = self.q.astype(np.float32) * quantizer.expand_rows(self.scale, kq, self.fmt.group)
        w[self.outliers] = self.w_out
        return w


def split_columns(absmax: Optional[np.ndarray], width: int, outliers: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, outlier) input columns: the ``outliers`` largest calibration max|x| columns are kept in float."""
    if outliers == 0:
        return np.arange(width), np.zeros(0, dtype=np.int64)
    order = np.argsort(absmax, kind="stable")  # ascending
    return np.sort(order[:width - outliers]), np.sort(order[width - outliers:])


def quantize_linear(w: np.ndarray, fmt: LinearFormat, stats: Optional[LinearStats], method: str,
                    clip_search: bool = True) -> QuantizedLinear:
    """w [K, N] float -> QuantizedLinear (RTN or GPTQ)."""
    w = np.asarray(w, dtype=np.float32)
    keep, outliers = split_columns(None if stats is None else stats.absmax, w.shape[0], fmt.outliers)
    if method == "gptq":
        q, scale, w_out = gptq_lib.gptq(w, stats.hessian, keep, outliers, fmt.w_bits, fmt.group, clip_search)
    else:
        q, scale = quantizer.rtn(w[keep], fmt.w_bits, fmt.group, clip_search)
        w_out = w[outliers]
    return QuantizedLinear(fmt, keep, outliers, q, scale, w_out)


def activation_range(b: NodeBuilder, x_low: ir.Value, x_high: ir.Value, bits: int) -> tuple[ir.Value, ir.Value]:
    """(scale, lo) per token, (..., 1) each: lo = min(x_low), scale = (max(x_high) - lo) / (2^bits - 1), or 1
    where the token's range is empty (``x_low`` and ``x_high`` are the same tensor except in a lowering that
    masks columns out of the range)."""
    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731
    axes = b.const("axes", np.array([-1], dtype=np.int64))
    lo = b.op("ReduceMin", [x_low, axes], "act/ReduceMin", keepdims=1)
    hi = b.op("ReduceMax", [x_high, axes], "act/ReduceMax", keepdims=1)
    levels = b.const("levels", f32((1 << bits) - 1))
    scale = b.op("Div", [b.op("Sub", [hi, lo], "act/range"), levels], "act/scale_raw")
    scale = b.op("Where", [b.op("Greater", [scale, b.const("zero", f32(0.0))], "act/nonzero"), scale,
                           b.const("one", f32(1.0))], "act/scale")
    return scale, lo


def rounded_offsets(b: NodeBuilder, x: ir.Value, scale: ir.Value, lo: ir.Value) -> ir.Value:
    """(x - lo) / scale + ½: the codes before rounding down (>= ½ wherever x >= lo)."""
    shifted = b.op("Div", [b.op("Sub", [x, lo], "act/Sub"), scale], "act/Div")
    return b.op("Add", [shifted, b.const("half", np.array(0.5, dtype=np.float32))], "act/AddHalf")


def activation_codes(b: NodeBuilder, x: ir.Value, bits: int) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x (..., Kq) float32 -> (q, scale, lo): per-token unsigned ``bits`` codes q in [0, 2^bits - 1] (float32),
    the token's scale and minimum, (..., 1) each (see the diagram).

    The portable graph builds its codes here, and every lowering from ``activation_range`` and
    ``rounded_offsets``, so their integers are the same bit for bit.
    """
    scale, lo = activation_range(b, x, x, bits)
    levels = b.const("levels_clip", np.array(float((1 << bits) - 1), dtype=np.float32))
    q = b.op("Floor", [rounded_offsets(b, x, scale, lo)], "act/Floor")
    return b.op("Clip", [q, b.const("zero_clip", np.array(0.0, dtype=np.float32)), levels], "act/Clip"), scale, lo


def activation_zero(b: NodeBuilder, scale: ir.Value, lo: ir.Value, bits: int) -> tuple[ir.Value, ir.Value]:
    """(mid, zero): the code offset 2^(bits-1) and the token's float zero ``lo + mid·scale``, so that
    x̂ = (q - mid)·scale + zero."""
    mid = b.const("mid", np.array(float(1 << (bits - 1)), dtype=np.float32))
    return mid, b.op("Add", [lo, b.op("Mul", [mid, scale], "act/mid_scale")], "act/zero")


def _activation_qdq(b: NodeBuilder, x: ir.Value, bits: int) -> ir.Value:
    """x (..., Kq) float32 -> its per-token asymmetric ``bits`` fake-quantized value (see the diagram)."""
    q, scale, lo = activation_codes(b, x, bits)
    mid, zero = activation_zero(b, scale, lo, bits)
    q_signed = b.op("Sub", [q, mid], "act/q")
    return b.op("Add", [b.op("Mul", [q_signed, scale], "act/dq_scale"), zero], "act/dq")


def _weight_dq(b: NodeBuilder, ql: QuantizedLinear) -> ir.Value:
    """W_q stored [N, Kq] (packed along K, the GEMM plugin's layout) -> DequantizeLinear -> Transpose -> [Kq, N].

    Per-channel scales are the blocked form with one block of Kq, so every format is one node shape.
    """
    kq = ql.q.shape[0]
    w_int = b.const("weight_q", np.ascontiguousarray(ql.q.T).astype(INT_TYPES[ql.fmt.w_bits]))
    scale = b.const("weight_scale", np.ascontiguousarray(ql.scale.T))  # (N, G)
    dq = b.op("DequantizeLinear", [w_int, scale], "weight/DequantizeLinear", axis=1, block_size=ql.fmt.group or kq)
    return b.op("Transpose", [dq], "weight/Transpose", perm=[1, 0])


def build_quantized_linear(b: NodeBuilder, x: ir.Value, ql: QuantizedLinear, dtype: ir.DataType) -> ir.Value:
    """The subgraph of the docstring; returns y in ``dtype``."""
    xk = x if len(ql.outliers) == 0 else b.op("Gather", [x, b.const("keep", ql.keep)], "keep/Gather", axis=-1)
    if dtype != ir.DataType.FLOAT:
        xk = b.op("Cast", [xk], "in/Cast", to=ir.DataType.FLOAT)
    if ql.fmt.a_bits is not None:
        xk = _activation_qdq(b, xk, ql.fmt.a_bits)
    y = b.op("MatMul", [xk, _weight_dq(b, ql)], "MatMul")
    if dtype != ir.DataType.FLOAT:
        y = b.op("Cast", [y], "out/Cast", to=dtype)
    if len(ql.outliers):
        xo = b.op("Gather", [x, b.const("outlier_index", ql.outliers)], "outliers/Gather", axis=-1)
        w_out = ql.w_out.astype(ir.DataType(dtype).numpy())
        y = b.op("Add", [y, b.op("MatMul", [xo, b.const("weight_outliers", w_out)], "outliers/MatMul")], "Add")
    return y


QUANTIZATION_PASSES = ("quantize_linears", "quantize_embedding")


def require_float_source(context: PassContext) -> None:
    """Quantization reads the float export: refuses quantized and sparsified models, and missing float weights."""
    model_dir, manifest = context.model_dir, context.manifest
    done = [name for name in QUANTIZATION_PASSES if applied(manifest, name)]
    if done:
        raise QuantizationError(f"{model_dir} is already quantized ({', '.join(done)}); "
                                "optimize the unquantized export instead.")
    if applied(manifest, "contextual_sparsity"):
        raise QuantizationError(f"{model_dir} already has contextual sparsity; quantize and sparsify in one call on "
                                "the float export: `planforge optimize EXPORT --quant ... --sparsity-heads ... "
                                "--predictor ...` (sparsity runs first, its gathered decode slices stay float).")
    initializers = context.model.graph.initializers
    for lin in manifest.linears:
        value = initializers.get(lin["weight"])
        if value is None or value.const_value is None or value.const_value.dtype not in FLOAT_TYPES:
            raise QuantizationError(f"{model_dir}/model.onnx lacks the float weight {lin['weight']}; "
                                    "optimize the directory written by `planforge export`.")
        try:
            value.const_value.numpy()
        except (OSError, ValueError) as exc:
            raise QuantizationError(f"{model_dir}: the weights of {lin['module']} cannot be read ({exc}); "
                                    f"{constants.EXTERNAL_DATA_FILE} must sit beside model.onnx.") from None


class QuantizeLinearsPass(GraphPass):
    """Rewrites every ``MatMul(x, W)`` whose W is a listed linear's float initializer (see module doc)."""

    name = "quantize_linears"

    def __init__(self, options: QuantOptions, linears: list[dict], stats: Optional[dict[str, LinearStats]] = None,
                 on_linear: Callable[[str], None] = lambda module: None, calibration: Optional[dict] = None):
        super().__init__()
        self.options, self.stats, self.on_linear, self.calibration = options, stats or {}, on_linear, calibration
        self.records = {lin["weight"]: lin for lin in linears}
        self.float_weights = {w for w, lin in self.records.items() if lin["layer"] is None}  # lm_head, as in QUIK
        self.calibration_request: Optional[tuple] = None  # (text, samples, seq_len), read by prepare()

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["QuantizeLinearsPass"]:
        quant = options.quant
        if quant is None:
            return None
        require_float_source(context)
        quant.validate()
        for lin in context.manifest.linears:  # outlier counts against every layer's width, before any work
            format_for(quant, lin["role"], lin["in_features"])
        graph_pass = cls(quant, context.manifest.linears)
        if quant.needs_calibration:
            if options.calib is None:
                raise CalibrationError(f"--quant {quant.scheme} with outliers or GPTQ needs calibration text: "
                                       "--calib FILE.")
            from planforge.tokenizer import read_text

            if context.manifest.dtype == "bf16":  # calibration runs on ONNX Runtime's CPU kernels
                raise CalibrationError(f"--quant {quant.scheme} calibrates on ONNX Runtime, which has no bfloat16 "
                                       "MatMul on the CPU: quantize the fp16 or fp32 export of the model instead.")
            text = read_text(options.calib, "--calib")  # a missing or non-UTF-8 file fails before any work
            seq_len = options.calib_seq_len or min(256, context.manifest.dims.max_seq_len)
            graph_pass.calibration_request = (text, options.calib_samples, seq_len, str(options.calib))
        task = context.progress.add_task(f"quantize {quant.scheme} ({quant.weight_method})",
                                         total=len(context.manifest.linears))
        graph_pass.on_linear = lambda module: context.progress.advance(task)
        return graph_pass

    def prepare(self, context: PassContext) -> None:
        """Runs the calibration text through the float model: max|x| per input column (and X^T X for GPTQ)."""
        if self.calibration_request is None:
            return
        from planforge.tokenizer import Tokenizer

        text, count, seq_len, source = self.calibration_request
        samples = calibration_samples(Tokenizer(context.model_dir).encode(text), seq_len, count)
        task = context.progress.add_task("calibration", total=len(samples))
        self.stats = calibrate(context.model_dir, context.manifest, samples,
                               hessians=self.options.weight_method == "gptq",
                               on_sample=lambda i: context.progress.update(task, completed=i))
        self.calibration = {"text": source, "samples": len(samples), "seq_len": seq_len}

    def settings(self) -> dict:
        return {**self.options.settings(), "calibration": self.calibration}

    def _candidate(self, node: ir.Node) -> Optional[dict]:
        if node.op_type != "MatMul" or node.domain != "":
            return None
        weight = node.inputs[1]
        if weight is None or weight.const_value is None:
            return None  # activation x activation (none in the canonical graph)
        if weight.name not in self.records:
            self.refuse(f"{node.name}: constant weight {weight.name} is not a linear in planforge.json")
            return None
        if weight.name in self.float_weights:
            self.refuse(f"{node.name}: the LM head stays in float")
            return None
        if weight.const_value.dtype not in FLOAT_TYPES:
            self.refuse(f"{node.name}: weight is {weight.const_value.dtype}, already quantized")
            return None
        return self.records[weight.name]

    def rewrite_graph(self, graph: ir.Graph) -> int:
        count = 0
        for node in list(graph):
            record = self._candidate(node)
            if record is None:
                continue
            self.rewrite(graph, node, record)
            self.on_linear(record["module"])
            count += 1
        return count

    def rewrite(self, graph: ir.Graph, node: ir.Node, record: dict) -> None:
        x, weight = node.inputs
        fmt = format_for(self.options, record["role"], record["in_features"])
        stats = self.stats.get(weight.name)
        if stats is None and (fmt.outliers or self.options.weight_method == "gptq"):
            raise QuantizationError(f"no calibration statistics for {record['module']}.")
        ql = quantize_linear(weight.const_value.numpy().astype(np.float32), fmt, stats,
                             self.options.weight_method, self.options.clip_search)
        b = NodeBuilder(graph, f"{record['module']}/quant")
        y = build_quantized_linear(b, x, ql, weight.const_value.dtype)
        ir.convenience.replace_nodes_and_values(graph, node, [node], b.tape.nodes, [node.outputs[0]], [y])
        if not weight.uses() and weight.name in graph.initializers:
            graph.initializers.pop(weight.name)
