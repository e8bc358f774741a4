"""ONNX contract of the fused attention ops (domain ``planforge``, version 2)."""

from .._schema import AttrSpec, FLOAT, OpSchema, TensorSpec

_SCALE = AttrSpec("scale", "float", 0.0, "softmax scale; 0 means 1/sqrt(D)")

PREFILL = OpSchema(
    name="FusedAttentionPrefill",
    version=2,
    torch_op="fused_attention_prefill",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("q", FLOAT, "[B, Hq, Sq, D]"),
        TensorSpec("k", FLOAT, "[B, Hkv, Skv, D]", doc="Skv >= Sq; the queries are the last Sq positions"),
        TensorSpec("v", FLOAT, "[B, Hkv, Skv, D]"),
    ),
    outputs=(TensorSpec("out", FLOAT, "[B, Hq, Sq, D]"),),
    attributes=(
        _SCALE,
        AttrSpec("window", "int", 0, "0: full causal; w > 0: query i sees keys i-w < j <= i"),
        AttrSpec("sinks", "int", 0, "with window > 0: keys j < sinks are always visible (attention sinks)"),
    ),
    doc="Causal GQA/MQA attention, Hq % Hkv == 0, head dim 64 or 128, optional sliding window plus sinks.",
)

DECODE = OpSchema(
    name="FusedAttentionDecode",
    version=2,
    torch_op="fused_attention_decode",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("q", FLOAT, "[B, Hq, D]", doc="one new query token per sequence"),
        TensorSpec("k_cache", FLOAT, "[B, Hkv, Smax, D]"),
        TensorSpec("v_cache", FLOAT, "[B, Hkv, Smax, D]"),
        TensorSpec("seq_lens", ("int32",), "[B]", doc="valid cache entries per sequence, 1 <= len <= Smax"),
    ),
    outputs=(TensorSpec("out", FLOAT, "[B, Hq, D]"),),
    attributes=(_SCALE,),
    doc="q_len = 1 attention over cache entries [0, seq_lens[b]) (the new token's K/V already written). "
    "With a rolling sink cache (kv_cache_update, sinks > 0) the entries are a permutation of "
    "positions, which softmax attention does not see.",
)
