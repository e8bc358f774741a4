"""``planforge::SparseHeadsAttention`` as a TensorRT QDP plugin, in the Python form
(``@trtp.impl``): its Triton kernels run on TensorRT's stream.

Not AOT: it is a gathered q projection, the split-K decode attention and its combine, a
gathered output projection and a per-head sum (five launches), and TensorRT launches one
kernel per AOT plugin. An engine with it needs Python at run time. The optional b_q/cos/sin
arrive as placeholders with has_b_q/has_cos/has_sin = 0 (``plugins/_tensorrt.py``).

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue

from .schema import SPARSE_HEADS

NAME = SPARSE_HEADS.qualified_name


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
