"""``planforge::FusedAttentionPrefill`` and ``planforge::FusedAttentionDecode`` as TensorRT QDP plugins,
both AOT (one Triton kernel each, embedded in the engine), with the Python form as well.

The AOT kernels are the Python launcher's, adapted to one launch with no host-made objects:

- decode is the split-K kernel with one split, writing O directly (``kernel.decode_entry``). The
  Python path splits long caches across programs and merges the splits in a second kernel. With
  one split the grid is B x Hkv programs, so a long cache at batch 1 is slower than the Python
  launch (FlashDecoding's split needs a workspace and a second launch, which an AOT plugin has not).
- prefill reads Q, K and V through pointers (``kernel.prefill_entry``) instead of the TMA
  descriptors that the Python launcher builds on the host.

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue
from planforge.plugins.aot import compile_entry

from .schema import DECODE, PREFILL

PREFILL_NAME = PREFILL.qualified_name
DECODE_NAME = DECODE.qualified_name
PREFILL_TACTICS = {1: (64, 64, 4, 3), 2: (128, 64, 8, 3), 3: (64, 32, 4, 3)}  # BLOCK_M, BLOCK_N, warps, stages
DECODE_TACTICS = {1: (64, 4, 3), 2: (128, 4, 3)}  # BLOCK_N, warps, stages (kernel.DECODE_CONFIG is 1)


@trtp.register(PREFILL_NAME)
def fused_attention_prefill_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float = 0.0,
                                 window: int = 0, sinks: int = 0) -> trtp.TensorDesc:
    return glue.output_descs(PREFILL, [q, k, v], {"scale": scale, "window": window, "sinks": sinks})[0]


@trtp.autotune(PREFILL_NAME)
def fused_attention_prefill_formats(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                                    window: int, sinks: int,
                                    outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(PREFILL), "LINEAR", list(PREFILL_TACTICS))]


@trtp.aot_impl(PREFILL_NAME)
def fused_attention_prefill_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                                window: int, sinks: int, outputs: Tuple[trtp.TensorDesc], tactic: int):
    from .kernel import _qk_scale, prefill_entry

    B, Hq, Sq, D = q.shape_expr
    head_dim = glue.static(D, "FusedAttentionPrefill's head dim")
    bm, bn, warps, stages = PREFILL_TACTICS[tactic]
    tensor = glue.pointer(q)
    signature = {"Q": tensor, "K": tensor, "V": tensor, "O": tensor, **{n: "i32" for n in PREFILL_SCALARS}}
    payload = compile_entry(prefill_entry, signature, {"QK_SCALE": _qk_scale(scale, head_dim), "HEAD_D": head_dim,
                                                       "WINDOWED": window > 0, "BLOCK_M": bm, "BLOCK_N": bn},
                            num_warps=warps, num_stages=stages)
    return payload.name, payload.ptx, glue.launch(payload, prefill_grid(B, Hq, Sq, bm)), \
        glue.scalars(prefill_scalar_values(q.shape_expr, k.shape_expr, window, sinks))


@trtp.impl(PREFILL_NAME)
def fused_attention_prefill_python(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, scale: float, window: int,
                                   sinks: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(PREFILL, [q, k, v], {"scale": scale, "window": window, "sinks": sinks}, outputs, stream)


@trtp.register(DECODE_NAME)
def fused_attention_decode_desc(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                                seq_lens: trtp.TensorDesc, scale: float = 0.0) -> trtp.TensorDesc:
    return glue.output_descs(DECODE, [q, k_cache, v_cache, seq_lens], {"scale": scale})[0]


@trtp.autotune(DECODE_NAME)
def fused_attention_decode_formats(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                                   seq_lens: trtp.TensorDesc, scale: float,
                                   outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(DECODE), "LINEAR", list(DECODE_TACTICS))]


@trtp.aot_impl(DECODE_NAME)
def fused_attention_decode_aot(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                               seq_lens: trtp.TensorDesc, scale: float, outputs: Tuple[trtp.TensorDesc], tactic: int):
    from .kernel import _qk_scale, decode_entry, next_pow2

    B, Hq, D = q.shape_expr
    Hkv = glue.static(k_cache.shape_expr[1], "FusedAttentionDecode's KV heads")
    head_dim = glue.static(D, "FusedAttentionDecode's head dim")
    group = glue.static(Hq, "FusedAttentionDecode's query heads") // Hkv
    block_n, warps, stages = DECODE_TACTICS[tactic]
    tensor = glue.pointer(q)
    signature = {"Q": tensor, "K": tensor, "V": tensor, "L": "*i32", "O": tensor,
                 **{n: "i32" for n in DECODE_SCALARS}}
    payload = compile_entry(decode_entry, signature, {"QK_SCALE": _qk_scale(scale, head_dim), "G": group,
                                                      "G_PAD": max(16, next_pow2(group)), "HEAD_D": head_dim,
                                                      "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
    return payload.name, payload.ptx, glue.launch(payload, decode_grid(B, Hkv)), \
        glue.scalars(decode_scalar_values(q.shape_expr, k_cache.shape_expr))


@trtp.impl(DECODE_NAME)
def fused_attention_decode_python(q: trtp.Tensor, k_cache: trtp.Tensor, v_cache: trtp.Tensor,
                                  seq_lens: trtp.Tensor, scale: float, outputs: Tuple[trtp.Tensor],
                                  stream: int) -> None:
    glue.run_torch_op(DECODE, [q, k_cache, v_cache, seq_lens], {"scale": scale}, outputs, stream)


PREFILL_SCALARS = ("Sq", "Skv", "Hq", "G", "window", "sinks", "sqb", "sqh", "sqs", "skb", "skh", "sks",
                   "svb", "svh", "svs", "sob", "soh", "sos")  # kernel.prefill_entry's order
DECODE_SCALARS = ("Hq", "NG", "sqb", "sqh", "skb", "skh", "sks", "svb", "svh", "svs")  # kernel.decode_entry's


def prefill_grid(B, Hq, Sq, block_m: int) -> tuple:
    """One program per block of query rows and (sequence, query head), as kernel.prefill launches."""
    return (glue.cdiv(Sq, block_m), B * Hq)


def prefill_scalar_values(q_shape, kv_shape, window: int, sinks: int) -> list:
    """Lengths, heads, the query group size, the window, then the q/k/v/out strides (contiguous; out is q's shape)."""
    _, Hq, Sq, _ = q_shape
    Hkv, Skv = kv_shape[1], kv_shape[2]
    q_strides = glue.contiguous_strides(q_shape)[:3]
    kv_strides = glue.contiguous_strides(kv_shape)[:3]
    return [Sq, Skv, Hq, Hq // Hkv, window, sinks, *q_strides, *kv_strides, *kv_strides, *q_strides]


def decode_grid(B, Hkv) -> tuple:
    """One split (the grid's first axis) per (sequence, KV head), all Hq / Hkv query heads of the group together."""
    return (1, B * Hkv)


def decode_scalar_values(q_shape, cache_shape) -> list:
    """Query heads, KV groups, then the q and cache strides (contiguous)."""
    return [q_shape[1], cache_shape[1], *glue.contiguous_strides(q_shape)[:2],
            *glue.contiguous_strides(cache_shape)[:3], *glue.contiguous_strides(cache_shape)[:3]]
