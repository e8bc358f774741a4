"""Decode attention on predictor-selected heads (``planforge::SparseHeadsAttention``, v2).

``SparseHeadsAttention(x, w_q, w_k, w_v, w_o, cos, sin, k_cache, v_cache, positions, groups)``:
for each sequence b and each selected KV group g in ``groups[b]`` (a group is the Hq/Hkv
query heads sharing KV head g), project the new token ``x[b]`` to q (the group's query
heads), k and v, rotate q/k with ``cos/sin [B, D/2]``, write k/v at cache slot
``positions[b]``, attend over slots ``[0, positions[b]]``, and project the heads' outputs
with their column blocks of ``w_o [d, Hq*D]``. Output ``y [B, d]``; unselected heads
contribute nothing and their cache is neither read nor written (the selection is fixed
per sequence). Weights use the Hugging Face layouts. Exact rounding points are listed in
``reference.py``.
"""

from .ops import sparse_heads_decode
from .schema import SPARSE_HEADS

__all__ = ["SPARSE_HEADS", "sparse_heads_decode"]
