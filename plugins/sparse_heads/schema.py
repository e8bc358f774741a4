"""ONNX contract of the sparse-heads decode attention op (domain ``planforge``, version 2)."""

from .._schema import FLOAT, OpSchema, TensorSpec


SPARSE_HEADS = OpSchema(
    name="SparseHeadsAttention",
    version=2,
    torch_op="sparse_heads_decode",
    inputs=(
        TensorSpec("x", FLOAT, "[B, d]", doc="normed hidden state of the new token"),
        TensorSpec("w_q", FLOAT, "[Hq*D, d]"),
        TensorSpec("w_k", FLOAT, "[Hkv*D, d]"),
        TensorSpec("w_v", FLOAT, "[Hkv*D, d]"),
        TensorSpec("w_o", FLOAT, "[d, Hq*D]"),
        TensorSpec("cos", ("float32",), "[B, D/2]", doc="rotary tables at the new token's position"),
        TensorSpec("sin", ("float32",), "[B, D/2]"),
        TensorSpec("k_cache", FLOAT, "[B, Hkv, C, D]", doc="selected groups' row positions[b] is written"),
        TensorSpec("v_cache", FLOAT, "[B, Hkv, C, D]"),
        TensorSpec("positions", ("int32",), "[B]", doc="cache slot of the new token = entries before it"),
        TensorSpec("groups", ("int32",), "[B, h]", doc="selected KV-head groups per sequence, distinct"),
    ),
    outputs=(
        TensorSpec("y", FLOAT, "[B, d]", doc="o_proj output restricted to the selected heads"),
        TensorSpec("k_cache_out", FLOAT, "[B, Hkv, C, D]", doc="k_cache itself, after the write (aliased)"),
        TensorSpec("v_cache_out", FLOAT, "[B, Hkv, C, D]", doc="v_cache itself, after the write (aliased)"),
    ),
    mutates=("k_cache", "v_cache"),
    aliases=(("k_cache_out", "k_cache"), ("v_cache_out", "v_cache")),
    doc="Decode attention computed only for the query heads of the selected KV groups (a group is the "
    "Hq/Hkv query heads sharing one KV head; one head under MHA). The selection is per sequence and "
    "fixed for its generation (ShadowLLM predicts it once from the prompt), so caches of unselected "
    "groups are never read.",
)
