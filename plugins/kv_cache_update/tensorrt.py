"""``planforge::KVCacheUpdate`` as a TensorRT QDP plugin: an AOT plugin (one Triton kernel in the
engine) whose outputs alias the caches, so TensorRT updates them in place.

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue
from planforge.plugins.aot import compile_entry

from .schema import KV_CACHE_UPDATE

NAME = KV_CACHE_UPDATE.qualified_name
TACTICS = {1: 32, 2: 64}  # tactic -> new rows per program (BLOCK_S)


@trtp.register(NAME)
def kv_cache_update_desc(k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc, k_new: trtp.TensorDesc,
                         v_new: trtp.TensorDesc, positions: trtp.TensorDesc, cos: trtp.TensorDesc,
                         sin: trtp.TensorDesc, rolling: int = 0, sinks: int = 0, has_cos: int = 1,
                         has_sin: int = 1) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
    return glue.output_descs(KV_CACHE_UPDATE, [k_cache, v_cache, k_new, v_new, positions, cos, sin],
                             {"rolling": rolling, "sinks": sinks})


@trtp.autotune(NAME)
def kv_cache_update_tactics(k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc, k_new: trtp.TensorDesc,
                            v_new: trtp.TensorDesc, positions: trtp.TensorDesc, cos: trtp.TensorDesc,
                            sin: trtp.TensorDesc, rolling: int, sinks: int, has_cos: int, has_sin: int,
                            outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(KV_CACHE_UPDATE), "LINEAR", list(TACTICS))]


@trtp.aot_impl(NAME)
def kv_cache_update_aot(k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc, k_new: trtp.TensorDesc,
                        v_new: trtp.TensorDesc, positions: trtp.TensorDesc, cos: trtp.TensorDesc,
                        sin: trtp.TensorDesc, rolling: int, sinks: int, has_cos: int, has_sin: int,
                        outputs: Tuple[trtp.TensorDesc], tactic: int):
    from .kernel import kv_update_entry

    B, H, C, D = k_cache.shape_expr
    S = k_new.shape_expr[2]
    half_d = glue.static(D, "KVCacheUpdate's head dim") // 2
    block_s = TACTICS[tactic]
    rotary = bool(has_cos)
    tensor = glue.pointer(k_cache)
    signature = {"KC": tensor, "VC": tensor, "KN": tensor, "VN": tensor, "P": "*i32", "COS": "*fp32",
                 "SIN": "*fp32", "KC_OUT": tensor, "VC_OUT": tensor}
    signature.update({name: "i32" for name in SCALARS})
    payload = compile_entry(kv_update_entry, signature,
                            {"HALF_D": half_d, "BLOCK_S": block_s, "ROLLING": bool(rolling), "ROTARY": rotary})
    return payload.name, payload.ptx, glue.launch(payload, launch_grid(B, H, S, block_s)), \
        glue.scalars(scalar_values(k_cache.shape_expr, k_new.shape_expr, cos.shape_expr, sinks, rotary))


@trtp.impl(NAME)
def kv_cache_update_python(k_cache: trtp.Tensor, v_cache: trtp.Tensor, k_new: trtp.Tensor, v_new: trtp.Tensor,
                           positions: trtp.Tensor, cos: trtp.Tensor, sin: trtp.Tensor, rolling: int, sinks: int,
                           has_cos: int, has_sin: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(KV_CACHE_UPDATE, [k_cache, v_cache, k_new, v_new, positions, cos, sin],
                      {"rolling": rolling, "sinks": sinks, "has_cos": has_cos, "has_sin": has_sin}, outputs, stream)


# The kernel's scalar parameters, in its order (kernel.kv_update_entry).
SCALARS = ("S", "H", "C", "sinks", "skcb", "skch", "skcs", "svcb", "svch", "svcs",
           "sknb", "sknh", "skns", "svnb", "svnh", "svns", "scb", "scs")


def launch_grid(B, H, S, block_s: int) -> tuple:
    """One program per (sequence, KV head) and block of new rows, as kernel.kv_cache_update launches."""
    return (B * H, glue.cdiv(S, block_s))


def scalar_values(cache_shape, new_shape, cos_shape, sinks: int, rotary: bool) -> list:
    """SCALARS' values for contiguous tensors: the caches' and new rows' batch/head/row strides,
    and the rotary tables' (0 without rotary, as the Python launcher passes)."""
    cache = glue.contiguous_strides(cache_shape)[:3]
    new = glue.contiguous_strides(new_shape)[:3]
    table = glue.contiguous_strides(cos_shape)[:2] if rotary else [0, 0]
    return [new_shape[2], cache_shape[1], cache_shape[2], sinks, *cache, *cache, *new, *new, *table]
