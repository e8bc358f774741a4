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


# SparseMLP in two launches, each one TensorRT AOT kernel: the TensorRT graph preparation
# (graph_passes/tensorrt_prep.py) splits every SparseMLP node into these, because an AOT plugin is one
# kernel and SparseMLP's single-launch form adds into a zeroed accumulator with atomics.
SPARSE_MLP_GATE_UP = OpSchema(
    name="SparseMLPGateUp",
    version=1,
    torch_op="sparse_mlp_gate_up",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("x", FLOAT, "[B, d]"),
        TensorSpec("w_gate", FLOAT, "[F, d]"),
        TensorSpec("w_up", FLOAT, "[F, d]"),
        TensorSpec("neurons", ("int32",), "[B, k]"),
    ),
    outputs=(TensorSpec("h", ("float32",), "[B, k]", doc="silu(gate) * up of each selected neuron"),),
    doc="h[b, i] = silu(x[b].w_gate[j]) * (x[b].w_up[j]) for j = neurons[b, i], in float32: SparseMLP's "
    "first half.",
)

SPARSE_MLP_DOWN = OpSchema(
    name="SparseMLPDown",
    version=1,
    torch_op="sparse_mlp_down",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("h", ("float32",), "[B, k]"),
        TensorSpec("w_down_t", FLOAT, "[F, d]"),
        TensorSpec("neurons", ("int32",), "[B, k]"),
    ),
    outputs=(TensorSpec("y", FLOAT, "[B, d]"),),
    doc="y[b] = sum_i h[b, i] * w_down_t[neurons[b, i]], float32 accumulation in neuron order, rounded once "
    "to w_down_t's dtype: SparseMLP's second half, SparseMLP(x, ...) = SparseMLPDown(SparseMLPGateUp(x, ...), ...).",
)
