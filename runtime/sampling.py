"""Next-token selection: greedy, or temperature / top-k / top-p sampling from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from planforge.errors import InvalidGenerationConfigError


@dataclass(frozen=True)
class SamplingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1.0 keeps every token
    seed: Optional[int] = None

    def __post_init__(self):
        if not 0 < self.temperature < float("inf"):  # NaN and inf too: they would sample from NaN or uniformly
            raise InvalidGenerationConfigError(
                f"temperature must be a finite number > 0, got {self.temperature}; for deterministic output use "
                "greedy decoding.")
        if self.top_k < 0:
            raise InvalidGenerationConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidGenerationConfigError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}.")


def filter_logits(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """Scaled logits (B, V) with the tokens outside top-k / top-p set to -inf."""
    scores = logits.astype(np.float64) / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = np.partition(scores, -config.top_k, axis=-1)[:, -config.top_k][:, None]  # (B, 1)
        scores = np.where(scores < kth, -np.inf, scores)
    if config.top_p < 1.0:
        order = np.argsort(-scores, axis=-1, kind="stable")  # (B, V), most likely first
        sorted_probs = softmax(np.take_along_axis(scores, order, axis=-1))
        mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
        # Keep the smallest prefix whose mass reaches top_p: a token is dropped when the
        # tokens ranked before it already hold top_p. The first token is always kept.
        drop_sorted = mass_before >= config.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        scores = np.where(drop, -np.inf, scores)
    return scores


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - np.max(scores, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class Sampler:
    def __init__(self, config: SamplingConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits (B, V) -> next token ids (B,) int64."""
        if not self.config.do_sample:
            return np.argmax(logits, axis=-1).astype(np.int64)
        probs = softmax(filter_logits(logits, self.config))  # (B, V)
        cdf = np.cumsum(probs, axis=-1)
        draws = self.rng.random((probs.shape[0], 1)) * cdf[:, -1:]
        picked = (cdf < draws).sum(axis=-1)  # inverse-CDF lookup
        return np.minimum(picked, probs.shape[-1] - 1).astype(np.int64)
