"""KV-cache update (``planforge::KVCacheUpdate``, v2), linear or StreamingLLM rolling-with-sinks.

``KVCacheUpdate(k_cache, v_cache, k_new, v_new, positions[, cos, sin]; rolling, sinks)``:
caches ``[B, Hkv, C, D]`` (fp32/fp16/bf16, updated in place and returned as the aliased outputs ``k_cache_out``, ``v_cache_out``), new rows ``[B, Hkv, S, D]``,
``positions [B] int32`` (absolute position of each sequence's first new token), optional
rotary tables ``cos/sin [B, S, D/2] float32`` applied to K (rotate-half) before writing.

Slots: linear mode ``slot = p`` (``p < C``); rolling mode keeps ``sinks`` attention-sink
tokens and a ring of ``C - sinks`` recent ones: ``slot = p if p < sinks else
sinks + (p - sinks) % (C - sinks)``, the latest token winning a shared slot. The valid
length afterwards is ``min(positions + S, C)``, which is what ``FusedAttentionDecode``
takes as ``seq_lens``. Rotary here uses the positions the caller supplies in cos/sin;
StreamingLLM's in-cache re-indexing is the caller's choice of those positions.
"""

from .ops import kv_cache_update
from .reference import apply_rotary, cache_slots, rotary_cos_sin
from .schema import KV_CACHE_UPDATE

__all__ = ["KV_CACHE_UPDATE", "apply_rotary", "cache_slots", "kv_cache_update", "rotary_cos_sin"]
