"""ONNX contract of the sparse MLP op (domain ``planforge``, version 2)."""

from .._schema import FLOAT, OpSchema, TensorSpec


SPARSE_MLP = OpSchema(
    name="SparseMLP",
    version=2,
    torch_op="sparse_mlp",
    inputs=(
        TensorSpec("x", FLOAT, "[B, d]", doc="decode hidden states, one token per sequence"),
        TensorSpec("w_gate", FLOAT, "[F, d]"),
        TensorSpec("w_up", FLOAT, "[F, d]"),
        TensorSpec("w_down_t", FLOAT, "[F, d]", doc="down_proj weight transposed, so a neuron is one row"),
        TensorSpec("neurons", ("int32",), "[B, k]", doc="selected neurons of each sequence (from the predictor)"),
    ),
    outputs=(TensorSpec("y", FLOAT, "[B, d]"),),
    doc="y[b] = sum_{j in neurons[b]} silu(x[b].w_gate[j]) * (x[b].w_up[j]) * w_down_t[j], float32 "
    "accumulation (the gated LLaMA MLP restricted to the selected neurons; DejaVu / ShadowLLM).",
)
