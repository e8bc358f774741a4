"""The one interface every execution backend implements (ONNX Runtime now; torch and TensorRT next).

A backend runs a compiled model one step at a time: it takes the new tokens, the
attention mask over past and new tokens, and their positions, plus the KV cache
it returned last time, and gives back the logits and the grown cache. The cache
is opaque to callers, so a backend keeps it wherever it lives (host memory, GPU
buffers, a preallocated ring). Everything callers do goes through these methods:
the generator (``forward``), perplexity (``prefill_logits``) and multiple-choice
scoring (``repeat_cache``, one shared context for several continuations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from planforge.manifest import Manifest


class Backend:
    """Base class of the backends in ``runtime/backends/``; each registers with ``@register_backend``."""

    name: str = "backend"  # the registry name, set by @register_backend
    manifest: Manifest
    model_dir: Path
    device: str

    def empty_cache(self, batch_size: int) -> Any:
        """A KV cache with no past tokens for ``batch_size`` sequences."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: np.ndarray,  # (B, S) int64
        attention_mask: np.ndarray,  # (B, P + S) int64
        position_ids: np.ndarray,  # (B, S) int64
        cache: Any,
        last_only: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Returns logits (B, S, V) float32, or (B, 1, V) of the last position with ``last_only`` (what a
        sampler needs: a GPU backend then copies 1/S of them to the host), and the cache holding P + S
        positions (or S + W when streaming)."""
        raise NotImplementedError

    def repeat_cache(self, cache: Any, times: int) -> Any:
        """A cache for ``times`` x the batch, each sequence repeated (one shared prompt, many continuations)."""
        raise NotImplementedError

    def prefill_logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Logits (B, S, V) of a batch of (already padded) token ids with no past: for evaluation."""
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        logits, _ = self.forward(input_ids, attention_mask, positions_from_mask(attention_mask),
                                 self.empty_cache(input_ids.shape[0]))
        return logits

    def native_loop(self) -> Any:
        """The C++ runtime's generation loop over this model (``runtime/native.py``), which ``Generator``
        then runs instead of its Python loop; None where there is none."""
        return None

    def describe(self) -> str:
        """Short label for tables and reports, e.g. ``onnxruntime-cpu``."""
        return f"{self.name}-{self.device}"


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """Position of each token of a left-padded batch: (B, L) -> (B, L); padding gets 0 (never read)."""
    return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)
