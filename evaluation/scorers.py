"""Log-probabilities of token sequences from either kind of model.

A scorer maps ``ids`` (1, L) to next-token log-probabilities (L-1,) for
positions 1..L-1, so perplexity and accuracy code does not care whether the
model is the transformers source (torch) or a compiled model (any backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from planforge import constants
from planforge.errors import ModelNotFoundError


class Scorer(Protocol):
    name: str
    context_length: int

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        """ids (L,) int64 -> log p(ids[t] | ids[:t]) for t = 1..L-1, float64 (L-1,)."""

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        """ids (L,) -> logits (L, V) float32."""

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """``token_logprobs`` of several sequences in one forward pass."""

    def continuation_logprobs(self, context: np.ndarray, continuations: list[np.ndarray]) -> list[float]:
        """Total log p(continuation | context) of each continuation (multiple-choice scoring)."""


def _continuations_by_full_sequences(scorer, context, continuations) -> list[float]:
    """Scores each context + continuation as a whole sequence (simple, recomputes the context)."""
    keep = scorer.context_length - max(len(c) for c in continuations)
    sequences = [np.concatenate([context[-keep:], c]) for c in continuations]
    return [float(lp[-len(c):].sum()) for lp, c in zip(scorer.batch_logprobs(sequences), continuations)]


def right_pad(sequences: list[np.ndarray]) -> np.ndarray:
    """(B, L) ids; causal attention means the padding after a row never changes its earlier logits."""
    batch = np.zeros((len(sequences), max(len(s) for s in sequences)), dtype=np.int64)
    for row, seq in enumerate(sequences):
        batch[row, :len(seq)] = seq
    return batch


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _continuation_scores(first: np.ndarray, logits: np.ndarray, continuations: list[np.ndarray]) -> list[float]:
    """first (V,) predicts token 0 of every continuation; logits (N, Lc, V) row r predicts tokens 1.. of row r."""
    scores = []
    for row, cont in enumerate(continuations):
        rest = _log_softmax(logits[row, : len(cont) - 1])[np.arange(len(cont) - 1), cont[1:]]
        scores.append(float(first[cont[0]] + rest.sum()))
    return scores


def gather_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """logits (L, V) of ids (L,) -> log p(ids[t] | ids[:t]) for t = 1..L-1."""
    return _log_softmax(logits[:-1])[np.arange(len(ids) - 1), ids[1:]]


class BackendScorer:
    """A compiled model on any registered backend."""

    def __init__(self, model_dir: Path, backend: Optional[str] = None, device: str = "cpu"):
        from planforge.runtime.backends import open_backend

        self.backend = open_backend(model_dir, backend, device)
        self.name = f"{Path(model_dir).name} ({self.backend.describe()})"
        self.context_length = self.backend.manifest.dims.max_seq_len

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        return self.batch_logprobs([ids])[0]

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        return self.backend.prefill_logits(ids[None].astype(np.int64))[0]  # (L, V)

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.backend.prefill_logits(right_pad(sequences))  # (B, L, V)
        return [gather_logprobs(logits[row, :len(seq)], seq) for row, seq in enumerate(sequences)]

    def stream_logprobs(self, ids: np.ndarray, on_step: Callable[[int, int], None] = lambda done, total: None
                        ) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1..L-1 through one KV cache, the way the runtime streams text.

        A streaming model (``optimize --streaming``) fills its cache in one step and then takes one token per
        step, so any length works; a full-cache model runs the text as one prefill within its max_seq_len.
        """
        from planforge.runtime import Generator

        generator = Generator(self.backend)
        generator.check_prompts([ids])
        out = np.empty(len(ids) - 1, dtype=np.float64)

        def score(start: int, logits: np.ndarray) -> None:  # logits (1, n, V) predict ids[start + 1 ...]
            n = min(logits.shape[1], len(ids) - 1 - start)
            if n > 0:
                out[start:start + n] = _log_softmax(logits[0, :n])[np.arange(n), ids[start + 1:start + 1 + n]]
            on_step(start + logits.shape[1], len(ids))

        generator.prefill(ids[None].astype(np.int64), np.ones((1, len(ids)), dtype=np.int64), on_step=score)
        return out

    def continuation_logprobs(self, context: np.ndarray, continuations: list[np.ndarray]) -> list[float]:
        """Runs the shared context once, then every continuation as one batch over its KV cache."""
        s, n = self.backend, len(continuations)
        longest = max(len(c) for c in continuations)
        context = context[-(self.context_length - longest):][None]  # (1, C)
        width = context.shape[1]
        logits, cache = s.forward(context, np.ones_like(context), np.arange(width)[None], s.empty_cache(1))
        first = _log_softmax(logits[0, -1])  # (V,) predicts each continuation's first token
        batch = right_pad(continuations)  # (N, Lc); causal, so the padding is never seen by real tokens
        positions = np.broadcast_to(width + np.arange(longest), batch.shape)
        mask = np.ones((n, width + longest), dtype=np.int64)
        logits, _ = s.forward(batch, mask, positions, s.repeat_cache(cache, n))  # (N, Lc, V)
        return _continuation_scores(first, logits, continuations)


class TransformersScorer:
    def __init__(self, model_dir: Path):
        from planforge.exporter.loading import load_model

        self.model = load_model(Path(model_dir))
        self.name = f"{Path(model_dir).name} (transformers)"
        config = self.model.config
        self.context_length = getattr(config, "max_position_embeddings", None) or config.n_positions

    def token_logprobs(self, ids: np.ndarray) -> np.ndarray:
        return self.batch_logprobs([ids])[0]

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        return self.batch_logits([ids])[0]

    def batch_logits(self, sequences: list[np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.from_numpy(right_pad(sequences))).logits.float().numpy()  # (B, L, V)

    def batch_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.batch_logits(sequences)  # (B, L, V)
        return [gather_logprobs(logits[row, :len(seq)], seq) for row, seq in enumerate(sequences)]

    def continuation_logprobs(self, context: np.ndarray, continuations: list[np.ndarray]) -> list[float]:
        """Same shared-prefix scheme as the compiled scorer, on transformers' own KV cache."""
        import torch

        from planforge.exporter.loading import forward

        longest = max(len(c) for c in continuations)
        context = torch.from_numpy(context[-(self.context_length - longest):].astype(np.int64))[None]  # (1, C)
        batch = torch.from_numpy(right_pad(continuations))  # (N, Lc)
        with torch.no_grad():
            out = self.model(input_ids=context, use_cache=True)
            first = _log_softmax(out.logits[0, -1].float().numpy())  # (V,)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(continuations))
            logits = forward(self.model, input_ids=batch, past_key_values=cache, use_cache=True).logits.float().numpy()
        return _continuation_scores(first, logits, continuations)


def scorer_for(model: Path, backend: Optional[str] = None, device: str = "cpu") -> Scorer:
    """A backend scorer for a compiled model directory, transformers for a Hugging Face one."""
    model = Path(model)
    if (model / constants.MANIFEST_FILE).is_file():
        return BackendScorer(model, backend, device)
    if (model / "config.json").is_file():
        return TransformersScorer(model)
    raise ModelNotFoundError(f"{model} is neither a planforge compiled model nor a Hugging Face model directory.")
