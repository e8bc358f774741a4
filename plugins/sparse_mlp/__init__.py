"""Sparse gated MLP on predictor-selected neurons, for decode (``planforge::SparseMLP``, v2).

``SparseMLP(x, w_gate, w_up, w_down_t, neurons)``: ``x [B, d]`` (fp16/bf16), ``w_gate``,
``w_up`` ``[F, d]`` as in Hugging Face, ``w_down_t [F, d]`` = down_proj.weight transposed
once at build time (so each neuron's down column is a contiguous row), ``neurons [B, k]
int32`` the selected neuron ids per sequence (distinct). Output ``y [B, d]``::

    y[b] = sum_{j in neurons[b]} silu(x[b] . w_gate[j]) * (x[b] . w_up[j]) * w_down_t[j]

with float32 accumulation. With all F neurons selected it equals the dense LLaMA MLP.
"""

from .ops import sparse_mlp
from .schema import SPARSE_MLP

__all__ = ["SPARSE_MLP", "sparse_mlp"]
