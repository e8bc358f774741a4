"""Fused attention with KV cache (``planforge::FusedAttentionPrefill`` / ``FusedAttentionDecode``, v2).

Prefill
    ``out = FusedAttentionPrefill(q, k, v; scale, window, sinks)``, q ``[B, Hq, Sq, D]``,
    k/v ``[B, Hkv, Skv, D]`` (fp32, fp16 or bf16, Hq % Hkv == 0 so GQA and MQA are native,
    Skv >= Sq with the queries at the last Sq positions), out ``[B, Hq, Sq, D]`` in q's
    dtype. Query i (absolute position ``p = i + Skv - Sq``) sees key j iff ``j <= p`` and,
    when ``window > 0``, ``p - j < window or j < sinks`` (StreamingLLM window plus sinks).
    ``scale = 0`` means ``1/sqrt(D)``. Softmax in float32.

Decode
    ``out = FusedAttentionDecode(q, k_cache, v_cache, seq_lens; scale)``, q ``[B, Hq, D]``,
    caches ``[B, Hkv, Smax, D]``, ``seq_lens [B] int32`` (entries ``[0, seq_lens[b])``
    are valid and include the new token), out ``[B, Hq, D]``. The kernel splits each
    sequence's cache into chunks (FlashDecoding) so batch 1 with a long context fills the GPU.

``reference.py`` defines the numbers, ``kernel.py`` is Triton, ``ops.py`` registers
``torch.ops.planforge.fused_attention_prefill`` / ``fused_attention_decode``.
"""

from .ops import fused_attention_decode, fused_attention_prefill
from .reference import attention_decode, attention_prefill
from .schema import DECODE, PREFILL

__all__ = [
    "DECODE",
    "PREFILL",
    "attention_decode",
    "attention_prefill",
    "fused_attention_decode",
    "fused_attention_prefill",
]
