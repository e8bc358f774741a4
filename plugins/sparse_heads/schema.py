"""ONNX contract of the sparse-heads decode attention op (domain ``planforge``, version 3)."""

from .._schema import AttrSpec, FLOAT, OpSchema, TensorSpec


SPARSE_HEADS = OpSchema(
    name="SparseHeadsAttention",
    version=3,
    torch_op="sparse_heads_decode",
    inputs=(
        TensorSpec("x", FLOAT, "[B, d]", doc="normed hidden state of the new token"),
        TensorSpec("w_q", FLOAT, "[Hq*D, d]", doc="q_proj weight, a head's D rows contiguous (the lowered graph "
                   "stores it so; its prefill branch reads the transpose)"),
        TensorSpec("w_o", FLOAT, "[Hq*D, d]", doc="o_proj weight as the graph's MatMul reads it (a head's D rows)"),
        TensorSpec("k_cache", FLOAT, "[B, Hkv, C, D]", doc="the cache after this step's write (KVCacheUpdate)"),
        TensorSpec("v_cache", FLOAT, "[B, Hkv, C, D]"),
        TensorSpec("seq_lens", ("int32",), "[B]", doc="valid cache entries per sequence, the new token's included"),
        TensorSpec("heads", ("int32",), "[B, h]", doc="selected query heads per sequence, distinct"),
        TensorSpec("b_q", FLOAT, "[Hq*D]", optional=True, doc="q_proj bias"),
        TensorSpec("cos", ("float32",), "[B, D/2]", optional=True, doc="rotary tables at the new token's position; "
                   "absent: q is not rotated"),
        TensorSpec("sin", ("float32",), "[B, D/2]", optional=True),
    ),
    outputs=(TensorSpec("y", FLOAT, "[B, d]", doc="o_proj output (before its bias) of the selected heads only"),),
    attributes=(AttrSpec("scale", "float", 0.0, "softmax scale; 0 means 1/sqrt(D)"),),
    doc="Decode attention for the selected query heads only (ShadowLLM / DejaVu): q is projected from the "
    "selected heads' rows of w_q, rotated, attends over cache entries [0, seq_lens[b]) of its KV head "
    "(head // (Hq/Hkv)), and the selected heads' rows of w_o project it back; unselected heads contribute "
    "nothing. The cache is read, never written: the graph writes every KV head with KVCacheUpdate first, "
    "so a selection may change from token to token. v3: per-query-head selection, caches written outside, "
    "weights in the graph's MatMul row layout, optional q bias and rotary.",
)


# SparseHeadsAttention in three launches, each one TensorRT AOT kernel: the TensorRT graph preparation
# (graph_passes/tensorrt_prep.py) splits every SparseHeadsAttention node into these.
SPARSE_HEADS_Q = OpSchema(
    name="SparseHeadsQProj",
    version=1,
    torch_op="sparse_heads_q_proj",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("x", FLOAT, "[B, d]"),
        TensorSpec("w_q", FLOAT, "[Hq*D, d]", doc="a head's D rows contiguous"),
        TensorSpec("heads", ("int32",), "[B, h]"),
        TensorSpec("b_q", FLOAT, "[Hq*D]", optional=True),
        TensorSpec("cos", ("float32",), "[B, head_dim/2]", optional=True),
        TensorSpec("sin", ("float32",), "[B, head_dim/2]", optional=True),
    ),
    outputs=(TensorSpec("q", FLOAT, "[B, h, head_dim]", doc="the selected heads' queries, rotated"),),
    attributes=(AttrSpec("head_dim", "int", 0, "D"),),
    doc="SparseHeadsAttention's first step: q of the selected heads, accumulated in float32 (plus the "
    "bias), rounded to x's dtype, rotated in float32 and rounded again.",
)

SPARSE_HEADS_ATTEND = OpSchema(
    name="SparseHeadsAttend",
    version=1,
    torch_op="sparse_heads_attend",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("q", FLOAT, "[B, h, D]"),
        TensorSpec("k_cache", FLOAT, "[B, Hkv, C, D]"),
        TensorSpec("v_cache", FLOAT, "[B, Hkv, C, D]"),
        TensorSpec("seq_lens", ("int32",), "[B]"),
        TensorSpec("heads", ("int32",), "[B, h]"),
    ),
    outputs=(TensorSpec("attn", FLOAT, "[B, h, D]"),),
    attributes=(AttrSpec("scale", "float", 0.0, "softmax scale; 0 means 1/sqrt(D)"),
                AttrSpec("group", "int", 1, "query heads per KV head, Hq / Hkv")),
    doc="SparseHeadsAttention's second step: slot i of sequence b attends over cache entries "
    "[0, seq_lens[b]) of KV head heads[b, i] // group; the output is rounded to q's dtype.",
)

SPARSE_HEADS_O = OpSchema(
    name="SparseHeadsOProj",
    version=1,
    torch_op="sparse_heads_o_proj",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("attn", FLOAT, "[B, h, D]"),
        TensorSpec("w_o", FLOAT, "[Hq*D, d]"),
        TensorSpec("heads", ("int32",), "[B, h]"),
    ),
    outputs=(TensorSpec("y", FLOAT, "[B, d]"),),
    doc="SparseHeadsAttention's last step: y[b] = sum over slots i of attn[b, i] . w_o[heads[b, i] D : +D], "
    "float32 accumulation, rounded once to attn's dtype.",
)
