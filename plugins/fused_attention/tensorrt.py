"""``planforge::FusedAttentionPrefill`` and ``planforge::FusedAttentionDecode`` as TensorRT QDP
plugins, in the Python form (``@trtp.impl``): their Triton kernels run on TensorRT's stream.

Not AOT, because TensorRT launches one kernel per AOT plugin: decode is a split-K pass and its
combine (two launches and a float32 workspace), and prefill reads TMA descriptors built on the
host. An engine with these needs Python at run time.

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue

from .schema import DECODE, PREFILL

PREFILL_NAME = PREFILL.qualified_name
DECODE_NAME = DECODE.qualified_name


@trtp.register(PREFILL_NAME)
def fused_attention_prefill_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float = 0.0,
                                 window: int = 0, sinks: int = 0) -> trtp.TensorDesc:
    return glue.output_descs(PREFILL, [q, k, v], {"scale": scale, "window": window, "sinks": sinks})[0]


@trtp.autotune(PREFILL_NAME)
def fused_attention_prefill_formats(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                                    window: int, sinks: int,
                                    outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(PREFILL), "LINEAR")]


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
    return [trtp.AutoTuneCombination(glue.type_combination(DECODE), "LINEAR")]


@trtp.impl(DECODE_NAME)
def fused_attention_decode_python(q: trtp.Tensor, k_cache: trtp.Tensor, v_cache: trtp.Tensor,
                                  seq_lens: trtp.Tensor, scale: float, outputs: Tuple[trtp.Tensor],
                                  stream: int) -> None:
    glue.run_torch_op(DECODE, [q, k_cache, v_cache, seq_lens], {"scale": scale}, outputs, stream)
