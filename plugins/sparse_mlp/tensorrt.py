"""``planforge::SparseMLP`` as a TensorRT QDP plugin, in the Python form (``@trtp.impl``): its
Triton kernel runs on TensorRT's stream.

Not AOT: the kernel adds each block of neurons into a zeroed float32 accumulator with atomics,
then the result is cast to the activation dtype (three launches), and TensorRT launches one
kernel per AOT plugin. An engine with it needs Python at run time.

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue

from .schema import SPARSE_MLP

NAME = SPARSE_MLP.qualified_name


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
