"""Decode attention on predictor-selected query heads (``planforge::SparseHeadsAttention``, v3).

``SparseHeadsAttention(x, w_q, w_o, k_cache, v_cache, seq_lens, heads, [b_q, cos, sin])``: for each
sequence b and each selected query head n in ``heads[b]``, project the new token ``x[b]`` with
rows ``n*D .. n*D+D-1`` of ``w_q [Hq*D, d]`` (plus the bias), rotate with ``cos/sin [B, D/2]``,
attend over cache entries ``[0, seq_lens[b])`` of KV head ``n // (Hq/Hkv)``, and project back with
the same rows of ``w_o [Hq*D, d]``. Output ``y [B, d]``; unselected heads contribute nothing. The
op only reads the caches: the lowered graph writes every KV head (KVCacheUpdate) before it, which
keeps the cache complete while the selection changes token by token. Exact rounding points are
listed in ``reference.py``.
"""

from .ops import sparse_heads_decode
from .schema import SPARSE_HEADS

__all__ = ["SPARSE_HEADS", "sparse_heads_decode"]
