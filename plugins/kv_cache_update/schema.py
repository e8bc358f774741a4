"""ONNX contract of the KV-cache update op (domain ``planforge``, version 2)."""

from .._schema import AttrSpec, FLOAT, OpSchema, TensorSpec


KV_CACHE_UPDATE = OpSchema(
    name="KVCacheUpdate",
    version=2,
    torch_op="kv_cache_update",
    tensorrt_aot=True,
    inputs=(
        TensorSpec("k_cache", FLOAT, "[B, Hkv, C, D]", doc="updated in place"),
        TensorSpec("v_cache", FLOAT, "[B, Hkv, C, D]", doc="updated in place"),
        TensorSpec("k_new", FLOAT, "[B, Hkv, S, D]"),
        TensorSpec("v_new", FLOAT, "[B, Hkv, S, D]"),
        TensorSpec("positions", ("int32",), "[B]", doc="absolute position of each sequence's first new token"),
        TensorSpec("cos", ("float32",), "[B, S, D/2]", optional=True, doc="rotary cos for the new tokens"),
        TensorSpec("sin", ("float32",), "[B, S, D/2]", optional=True, doc="rotary sin for the new tokens"),
    ),
    outputs=(
        TensorSpec("k_cache_out", FLOAT, "[B, Hkv, C, D]", doc="k_cache itself, after the write (aliased)"),
        TensorSpec("v_cache_out", FLOAT, "[B, Hkv, C, D]", doc="v_cache itself, after the write (aliased)"),
    ),
    attributes=(
        AttrSpec("rolling", "int", 0, "0: slot = position; 1: StreamingLLM sink + rolling window"),
        AttrSpec("sinks", "int", 0, "rolling mode: positions < sinks keep their slot forever"),
    ),
    mutates=("k_cache", "v_cache"),
    aliases=(("k_cache_out", "k_cache"), ("v_cache_out", "v_cache")),
    doc="Writes new K/V rows into a preallocated cache. Linear mode: token at position p goes to "
    "slot p (p < C required). Rolling mode: slot(p) = p if p < sinks else sinks + (p - sinks) % (C - sinks); "
    "when several new tokens share a slot the latest wins. With cos/sin, K is rotated first "
    "(rotate-half, as in Llama): k1' = k1 cos - k2 sin, k2' = k2 cos + k1 sin, in float32. "
    "Valid cache length afterwards: min(positions + S, C). The outputs are the caches themselves "
    "(aliased), so the graph orders every read of the cache after the write. v2: float32, aliased outputs.",
    domain="planforge",
)
