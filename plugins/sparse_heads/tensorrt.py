"""``planforge::SparseHeadsAttention`` and its three steps as TensorRT QDP plugins.

SparseHeadsAttention itself has the Python form only (``@trtp.impl``, its Triton kernels on
TensorRT's stream): a gathered q projection, the split-K decode attention and its combine, a
gathered output projection and a per-head sum are five launches, and TensorRT launches one kernel
per AOT plugin. The TensorRT graph preparation therefore splits each SparseHeadsAttention node into
``SparseHeadsQProj``, ``SparseHeadsAttend`` and ``SparseHeadsOProj``, all AOT (one kernel each, no
Python at run time). The optional b_q/cos/sin arrive as placeholders with has_b_q/has_cos/has_sin = 0
(``plugins/_tensorrt.py``).

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue
from planforge.plugins.aot import compile_entry

from .schema import SPARSE_HEADS, SPARSE_HEADS_ATTEND, SPARSE_HEADS_O, SPARSE_HEADS_Q

NAME = SPARSE_HEADS.qualified_name
Q_NAME = SPARSE_HEADS_Q.qualified_name
ATTEND_NAME = SPARSE_HEADS_ATTEND.qualified_name
O_NAME = SPARSE_HEADS_O.qualified_name
ATTEND_TACTICS = {1: (64, 4, 3), 2: (128, 4, 3)}  # BLOCK_N, warps, stages: fused_attention's decode tactics


@trtp.register(NAME)
def sparse_heads_desc(x: trtp.TensorDesc, w_q: trtp.TensorDesc, w_o: trtp.TensorDesc, k_cache: trtp.TensorDesc,
                      v_cache: trtp.TensorDesc, seq_lens: trtp.TensorDesc, heads: trtp.TensorDesc,
                      b_q: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc, scale: float = 0.0,
                      has_b_q: int = 1, has_cos: int = 1, has_sin: int = 1) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_HEADS, [x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q, cos, sin],
                             {"scale": scale})[0]


@trtp.autotune(NAME)
def sparse_heads_formats(x: trtp.TensorDesc, w_q: trtp.TensorDesc, w_o: trtp.TensorDesc, k_cache: trtp.TensorDesc,
                         v_cache: trtp.TensorDesc, seq_lens: trtp.TensorDesc, heads: trtp.TensorDesc,
                         b_q: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc, scale: float,
                         has_b_q: int, has_cos: int, has_sin: int,
                         outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_HEADS), "LINEAR")]


@trtp.impl(NAME)
def sparse_heads_python(x: trtp.Tensor, w_q: trtp.Tensor, w_o: trtp.Tensor, k_cache: trtp.Tensor,
                        v_cache: trtp.Tensor, seq_lens: trtp.Tensor, heads: trtp.Tensor, b_q: trtp.Tensor,
                        cos: trtp.Tensor, sin: trtp.Tensor, scale: float, has_b_q: int, has_cos: int, has_sin: int,
                        outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(SPARSE_HEADS, [x, w_q, w_o, k_cache, v_cache, seq_lens, heads, b_q, cos, sin],
                      {"scale": scale, "has_b_q": has_b_q, "has_cos": has_cos, "has_sin": has_sin}, outputs, stream)


@trtp.register(Q_NAME)
def sparse_heads_q_proj_desc(x: trtp.TensorDesc, w_q: trtp.TensorDesc, heads: trtp.TensorDesc, b_q: trtp.TensorDesc,
                             cos: trtp.TensorDesc, sin: trtp.TensorDesc, head_dim: int = 0, has_b_q: int = 1,
                             has_cos: int = 1, has_sin: int = 1) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_HEADS_Q, [x, w_q, heads, b_q, cos, sin], {"head_dim": head_dim})[0]


@trtp.autotune(Q_NAME)
def sparse_heads_q_proj_formats(x: trtp.TensorDesc, w_q: trtp.TensorDesc, heads: trtp.TensorDesc,
                                b_q: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc, head_dim: int,
                                has_b_q: int, has_cos: int, has_sin: int,
                                outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_HEADS_Q), "LINEAR")]


@trtp.aot_impl(Q_NAME)
def sparse_heads_q_proj_aot(x: trtp.TensorDesc, w_q: trtp.TensorDesc, heads: trtp.TensorDesc, b_q: trtp.TensorDesc,
                            cos: trtp.TensorDesc, sin: trtp.TensorDesc, head_dim: int, has_b_q: int, has_cos: int,
                            has_sin: int, outputs: Tuple[trtp.TensorDesc]):
    from .kernel import RH, q_block_d, q_kernel

    B, d = x.shape_expr
    h = heads.shape_expr[1]
    hidden = glue.static(d, "SparseHeadsQProj's hidden size")
    if hidden % q_block_d(hidden) or (head_dim // 2) % RH:
        raise ValueError(f"SparseHeadsQProj's AOT kernel needs a hidden size that is a multiple of 256 (this one is "
                         f"{hidden}) and a head dim that is a multiple of {2 * RH} (this one is {head_dim})")
    tensor = glue.pointer(x)
    signature = {"X": tensor, "WQ": tensor, "HEADS": "*i32", "BQ": tensor, "COS": "*fp32", "SIN": "*fp32",
                 "d": "i32", "h": "i32", "QB": tensor}
    payload = compile_entry(q_kernel, signature, {"HAS_BIAS": bool(has_b_q), "ROTARY": bool(has_cos),
                                                  "HALF": head_dim // 2, "RH": RH, "BLOCK_D": q_block_d(hidden)})
    return payload.name, payload.ptx, glue.launch(payload, q_grid(B, h, head_dim)), glue.scalars([d, h])


@trtp.impl(Q_NAME)
def sparse_heads_q_proj_python(x: trtp.Tensor, w_q: trtp.Tensor, heads: trtp.Tensor, b_q: trtp.Tensor,
                               cos: trtp.Tensor, sin: trtp.Tensor, head_dim: int, has_b_q: int, has_cos: int,
                               has_sin: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(SPARSE_HEADS_Q, [x, w_q, heads, b_q, cos, sin],
                      {"head_dim": head_dim, "has_b_q": has_b_q, "has_cos": has_cos, "has_sin": has_sin}, outputs,
                      stream)


@trtp.register(ATTEND_NAME)
def sparse_heads_attend_desc(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                             seq_lens: trtp.TensorDesc, heads: trtp.TensorDesc, scale: float = 0.0,
                             group: int = 1) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_HEADS_ATTEND, [q, k_cache, v_cache, seq_lens, heads],
                             {"scale": scale, "group": group})[0]


@trtp.autotune(ATTEND_NAME)
def sparse_heads_attend_formats(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                                seq_lens: trtp.TensorDesc, heads: trtp.TensorDesc, scale: float, group: int,
                                outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_HEADS_ATTEND), "LINEAR", list(ATTEND_TACTICS))]


@trtp.aot_impl(ATTEND_NAME)
def sparse_heads_attend_aot(q: trtp.TensorDesc, k_cache: trtp.TensorDesc, v_cache: trtp.TensorDesc,
                            seq_lens: trtp.TensorDesc, heads: trtp.TensorDesc, scale: float, group: int,
                            outputs: Tuple[trtp.TensorDesc], tactic: int):
    from planforge.plugins.fused_attention.kernel import _qk_scale

    from .kernel import attend_entry

    B, h, D = q.shape_expr
    head_dim = glue.static(D, "SparseHeadsAttend's head dim")
    block_n, warps, stages = ATTEND_TACTICS[tactic]
    tensor = glue.pointer(q)
    signature = {"Q": tensor, "K": tensor, "V": tensor, "L": "*i32", "HEADS": "*i32", "O": tensor,
                 **{n: "i32" for n in ATTEND_SCALARS}}
    payload = compile_entry(attend_entry, signature, {"QK_SCALE": _qk_scale(scale, head_dim), "GROUP": group,
                                                      "HEAD_D": head_dim, "BLOCK_N": block_n},
                            num_warps=warps, num_stages=stages)
    return payload.name, payload.ptx, glue.launch(payload, attend_grid(B, h)), \
        glue.scalars(attend_scalar_values(q.shape_expr, k_cache.shape_expr))


@trtp.impl(ATTEND_NAME)
def sparse_heads_attend_python(q: trtp.Tensor, k_cache: trtp.Tensor, v_cache: trtp.Tensor, seq_lens: trtp.Tensor,
                               heads: trtp.Tensor, scale: float, group: int, outputs: Tuple[trtp.Tensor],
                               stream: int) -> None:
    glue.run_torch_op(SPARSE_HEADS_ATTEND, [q, k_cache, v_cache, seq_lens, heads], {"scale": scale, "group": group},
                      outputs, stream)


@trtp.register(O_NAME)
def sparse_heads_o_proj_desc(attn: trtp.TensorDesc, w_o: trtp.TensorDesc, heads: trtp.TensorDesc) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_HEADS_O, [attn, w_o, heads], {})[0]


@trtp.autotune(O_NAME)
def sparse_heads_o_proj_formats(attn: trtp.TensorDesc, w_o: trtp.TensorDesc, heads: trtp.TensorDesc,
                                outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_HEADS_O), "LINEAR")]


@trtp.aot_impl(O_NAME)
def sparse_heads_o_proj_aot(attn: trtp.TensorDesc, w_o: trtp.TensorDesc, heads: trtp.TensorDesc,
                            outputs: Tuple[trtp.TensorDesc]):
    from .kernel import OPROJ_BLOCK_O, oproj_entry

    B, h, D = attn.shape_expr
    d = w_o.shape_expr[1]
    tensor = glue.pointer(attn)
    signature = {"A": tensor, "WO": tensor, "HEADS": "*i32", "d": "i32", "h": "i32", "Y": tensor}
    payload = compile_entry(oproj_entry, signature, {"D": glue.static(D, "SparseHeadsOProj's head dim"),
                                                     "BLOCK_O": OPROJ_BLOCK_O})
    return payload.name, payload.ptx, glue.launch(payload, o_grid(B, d, OPROJ_BLOCK_O)), glue.scalars([d, h])


@trtp.impl(O_NAME)
def sparse_heads_o_proj_python(attn: trtp.Tensor, w_o: trtp.Tensor, heads: trtp.Tensor, outputs: Tuple[trtp.Tensor],
                               stream: int) -> None:
    glue.run_torch_op(SPARSE_HEADS_O, [attn, w_o, heads], {}, outputs, stream)


ATTEND_SCALARS = ("NG", "sqb", "sqh", "skb", "skh", "sks", "svb", "svh", "svs")  # kernel.attend_entry's order


def q_grid(B, h, head_dim: int) -> tuple:
    """One program per (sequence, selected head) and block of RH rows of each half, as kernel.q_proj launches."""
    from .kernel import RH

    return (B * h, head_dim // 2 // RH)


def attend_grid(B, h) -> tuple:
    """One split per (sequence, selected head)."""
    return (1, B * h)


def attend_scalar_values(q_shape, cache_shape) -> list:
    """The selected heads, then the q and cache strides (contiguous)."""
    return [q_shape[1], *glue.contiguous_strides(q_shape)[:2], *glue.contiguous_strides(cache_shape)[:3],
            *glue.contiguous_strides(cache_shape)[:3]]


def o_grid(B, d, block_o: int) -> tuple:
    """One program per block of outputs of one sequence, as kernel.o_proj launches."""
    return (glue.cdiv(d, block_o), B)
