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
