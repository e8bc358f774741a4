"""ONNX contract of the QUIK ops (domain ``planforge``, version 2). See reference.py for the math."""

from .._schema import AttrSpec, FLOAT, OpSchema, TensorSpec

_BITS = AttrSpec("bits", "int", 4, "4 (W4A4, two codes per byte) or 8 (W8A8, e.g. LLaMA down_proj)")

QUANTIZE = OpSchema(
    name="QuikQuantize",
    version=2,
    torch_op="quik_quantize",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("x", FLOAT, "[M, K]"),
        TensorSpec("perm", ("int32",), "[K]", doc="quantized columns first, outlier columns last"),
    ),
    outputs=(
        TensorSpec("x_q", ("int8",), "[M, (K - n_outliers) * bits / 8]", doc="signed codes, packed"),
        TensorSpec("x_scale", ("float32",), "[M]"),
        TensorSpec("x_zero", ("float32",), "[M]", doc="x ~= code * x_scale + x_zero"),
        TensorSpec("x_out", FLOAT, "[M, n_outliers]"),
    ),
    attributes=(AttrSpec("n_outliers", "int", 0, "number of fp16/bf16 outlier columns"), _BITS),
    doc="Per-token asymmetric activation quantization with outlier split (QUIK).",
)

MATMUL = OpSchema(
    name="QuikMatMul",
    version=2,
    torch_op="quik_matmul",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("x_q", ("int8",), "[M, Kq * bits / 8]"),
        TensorSpec("x_scale", ("float32",), "[M]"),
        TensorSpec("x_zero", ("float32",), "[M]"),
        TensorSpec("x_out", FLOAT, "[M, Ko]"),
        TensorSpec("w_q", ("int8",), "[N, Kq * bits / 8]", doc="symmetric per-channel codes, packed like x_q"),
        TensorSpec("w_scale", ("float32",), "[N]"),
        TensorSpec("w_sum", ("float32",), "[N]", doc="sum over K of the integer weights"),
        TensorSpec("w_out", FLOAT, "[N, Ko]"),
    ),
    outputs=(TensorSpec("y", FLOAT, "[M, N]"),),
    attributes=(_BITS,),
    doc="y = (q_x @ q_w^T) x_scale w_scale + x_zero (w_scale w_sum) + x_out @ w_out^T; "
    "integer products accumulate exactly (INT32 / FP8 tensor cores on Hopper).",
)
