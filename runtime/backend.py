"""The one interface every execution backend implements (ONNX Runtime now; TensorRT and torch later).

A backend runs the compiled graph one step at a time: it takes the new tokens,
the full attention mask and the positions, plus the KV cache it returned last
time, and gives back the logits and the grown cache. The cache is opaque to
callers, so a backend keeps it wherever it lives (host memory, GPU buffers).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from planforge.runtime.manifest import Manifest


class Backend(Protocol):
    manifest: Manifest

    def empty_cache(self, batch_size: int) -> Any:
        """A KV cache with no past tokens for ``batch_size`` sequences."""

    def forward(
        self,
        input_ids: np.ndarray,  # (B, S) int64
        attention_mask: np.ndarray,  # (B, P + S) int64
        position_ids: np.ndarray,  # (B, S) int64
        cache: Any,
    ) -> tuple[np.ndarray, Any]:
        """Returns logits (B, S, V) float32 and the cache holding P + S positions."""


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """Position of each token of a left-padded batch: (B, L) -> (B, L); padding gets 0 (never read)."""
    return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)
