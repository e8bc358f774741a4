"""``planforge::SparseMLP`` and its two halves as TensorRT QDP plugins.

SparseMLP itself has the Python form only (``@trtp.impl``, its Triton kernel on TensorRT's stream):
its one launch adds each block of neurons into a zeroed float32 accumulator with atomics, then
casts, and TensorRT launches one kernel per AOT plugin. The TensorRT graph preparation therefore
splits each SparseMLP node into ``SparseMLPGateUp`` and ``SparseMLPDown``, both AOT (one kernel
each, embedded in the engine, no Python at run time).

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue
from planforge.plugins.aot import compile_entry

from .schema import SPARSE_MLP, SPARSE_MLP_DOWN, SPARSE_MLP_GATE_UP

NAME = SPARSE_MLP.qualified_name
GATE_UP_NAME = SPARSE_MLP_GATE_UP.qualified_name
DOWN_NAME = SPARSE_MLP_DOWN.qualified_name


@trtp.register(NAME)
def sparse_mlp_desc(x: trtp.TensorDesc, w_gate: trtp.TensorDesc, w_up: trtp.TensorDesc, w_down_t: trtp.TensorDesc,
                    neurons: trtp.TensorDesc) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_MLP, [x, w_gate, w_up, w_down_t, neurons], {})[0]


@trtp.autotune(NAME)
def sparse_mlp_formats(x: trtp.TensorDesc, w_gate: trtp.TensorDesc, w_up: trtp.TensorDesc,
                       w_down_t: trtp.TensorDesc, neurons: trtp.TensorDesc,
                       outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_MLP), "LINEAR")]


@trtp.impl(NAME)
def sparse_mlp_python(x: trtp.Tensor, w_gate: trtp.Tensor, w_up: trtp.Tensor, w_down_t: trtp.Tensor,
                      neurons: trtp.Tensor, outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(SPARSE_MLP, [x, w_gate, w_up, w_down_t, neurons], {}, outputs, stream)


@trtp.register(GATE_UP_NAME)
def sparse_mlp_gate_up_desc(x: trtp.TensorDesc, w_gate: trtp.TensorDesc, w_up: trtp.TensorDesc,
                            neurons: trtp.TensorDesc) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_MLP_GATE_UP, [x, w_gate, w_up, neurons], {})[0]


@trtp.autotune(GATE_UP_NAME)
def sparse_mlp_gate_up_formats(x: trtp.TensorDesc, w_gate: trtp.TensorDesc, w_up: trtp.TensorDesc,
                               neurons: trtp.TensorDesc,
                               outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_MLP_GATE_UP), "LINEAR")]


@trtp.aot_impl(GATE_UP_NAME)
def sparse_mlp_gate_up_aot(x: trtp.TensorDesc, w_gate: trtp.TensorDesc, w_up: trtp.TensorDesc,
                           neurons: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]):
    from .kernel import GATE_UP_CONFIG, gate_up_block_d, gate_up_entry

    B, d = x.shape_expr
    k = neurons.shape_expr[1]
    block_j, _, warps = GATE_UP_CONFIG
    tensor = glue.pointer(x)
    signature = {"X": tensor, "WG": tensor, "WU": tensor, "IDX": "*i32", "d": "i32", "k": "i32", "H": "*fp32"}
    payload = compile_entry(gate_up_entry, signature,
                            {"BLOCK_J": block_j, "BLOCK_D": gate_up_block_d(glue.static(d, "SparseMLP's hidden size"))},
                            num_warps=warps)
    return payload.name, payload.ptx, glue.launch(payload, gate_up_grid(B, k)), glue.scalars([d, k])


@trtp.impl(GATE_UP_NAME)
def sparse_mlp_gate_up_python(x: trtp.Tensor, w_gate: trtp.Tensor, w_up: trtp.Tensor, neurons: trtp.Tensor,
                              outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(SPARSE_MLP_GATE_UP, [x, w_gate, w_up, neurons], {}, outputs, stream)


@trtp.register(DOWN_NAME)
def sparse_mlp_down_desc(h: trtp.TensorDesc, w_down_t: trtp.TensorDesc, neurons: trtp.TensorDesc) -> trtp.TensorDesc:
    return glue.output_descs(SPARSE_MLP_DOWN, [h, w_down_t, neurons], {})[0]


@trtp.autotune(DOWN_NAME)
def sparse_mlp_down_formats(h: trtp.TensorDesc, w_down_t: trtp.TensorDesc, neurons: trtp.TensorDesc,
                            outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(SPARSE_MLP_DOWN), "LINEAR")]


@trtp.aot_impl(DOWN_NAME)
def sparse_mlp_down_aot(h: trtp.TensorDesc, w_down_t: trtp.TensorDesc, neurons: trtp.TensorDesc,
                        outputs: Tuple[trtp.TensorDesc]):
    from .kernel import DOWN_CONFIG, down_entry

    B, k = h.shape_expr
    d = w_down_t.shape_expr[1]
    block_j, block_o, warps = DOWN_CONFIG
    tensor = glue.pointer(w_down_t)
    signature = {"H": "*fp32", "WD": tensor, "IDX": "*i32", "d": "i32", "k": "i32", "Y": tensor}
    payload = compile_entry(down_entry, signature, {"BLOCK_J": block_j, "BLOCK_O": block_o}, num_warps=warps)
    return payload.name, payload.ptx, glue.launch(payload, down_grid(B, d, block_o)), glue.scalars([d, k])


@trtp.impl(DOWN_NAME)
def sparse_mlp_down_python(h: trtp.Tensor, w_down_t: trtp.Tensor, neurons: trtp.Tensor,
                           outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(SPARSE_MLP_DOWN, [h, w_down_t, neurons], {}, outputs, stream)


def gate_up_grid(B, k) -> tuple:
    """One program per block of selected neurons of one sequence, as kernel.gate_up launches."""
    from .kernel import GATE_UP_CONFIG

    return (glue.cdiv(k, GATE_UP_CONFIG[0]), B)


def down_grid(B, d, block_o: int) -> tuple:
    """One program per block of outputs of one sequence, as kernel.down launches."""
    return (glue.cdiv(d, block_o), B)
