"""Log-probabilities of token sequences from either kind of model.

A scorer maps ``ids`` (1, L) to next-token log-probabilities (L-1,) for
positions 1..L-1, so perplexity and accuracy code does not care whether the
model is the transformers source (torch) or a compiled model (any backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from planforge import constants
from planforge.errors import ModelNotFoundError


class Scorer(Protocol):
    name: str
    context_length: int

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        """ids (L,) int64 -> log p(ids[t] | ids[:t]) for t = 1..L-1, float64 (L-1,)."""

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """``token_logprobs`` of several sequences in one forward pass."""


def right_pad(sequences: list[np.ndarray]) -> np.ndarray:
    """(B, L) ids; causal attention means the padding after a row never changes its earlier logits."""
    batch = np.zeros((len(sequences), max(len(s) for s in sequences)), dtype=np.int64)
    for row, seq in enumerate(sequences):
        batch[row, :len(seq)] = seq
    return batch


def _gather_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)  # (L, V)
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=-1))
    return shifted[np.arange(len(ids) - 1), ids[1:]] - logz


class CompiledScorer:
    def __init__(self, model_dir: Path, provider: str = "cpu"):
        from planforge.runtime import Session

        self.session = Session(model_dir, provider=provider)
        self.name = f"{Path(model_dir).name} (onnxruntime-{provider})"
        self.context_length = self.session.manifest.dims.max_seq_len

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        return self.batch_logprobs([ids])[0]

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.session.run_prefill(right_pad(sequences))  # (B, L, V)
        return [_gather_logprobs(logits[row, :len(seq)], seq) for row, seq in enumerate(sequences)]


class TransformersScorer:
    def __init__(self, model_dir: Path):
        from planforge.exporter.loading import load_model

        self.model = load_model(Path(model_dir))
        self.name = f"{Path(model_dir).name} (transformers)"
        config = self.model.config
        self.context_length = getattr(config, "max_position_embeddings", None) or config.n_positions

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        return self.batch_logprobs([ids])[0]

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.from_numpy(right_pad(sequences))).logits.float().numpy()  # (B, L, V)
        return [_gather_logprobs(logits[row, :len(seq)], seq) for row, seq in enumerate(sequences)]


def scorer_for(model: Path, provider: str = "cpu") -> Scorer:
    model = Path(model)
    if (model / constants.MANIFEST_FILE).is_file():
        return CompiledScorer(model, provider)
    if (model / "config.json").is_file():
        return TransformersScorer(model)
    raise ModelNotFoundError(f"{model} is neither a planforge compiled model nor a Hugging Face model directory.")
