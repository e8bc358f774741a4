"""Strided sliding-window perplexity.

The text is tokenized once and scored in windows of ``context`` tokens that
start every ``stride`` tokens; each window scores only the tokens no earlier
window scored, and never its own first token (it has no context there). With
``stride == context`` this is the GPTQ/QUIK WikiText2 protocol (disjoint
windows); a smaller stride (e.g. context/2) scores every token after the first
once, each with at least ``context - stride`` tokens of left context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from planforge.errors import InvalidGenerationConfigError


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per token (nats)
    tokens: int  # tokens scored
    windows: int


def windows(total: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window over ``total`` tokens."""
    if context < 2 or not 0 < stride <= context:
        raise InvalidGenerationConfigError(f"need context >= 2 and 0 < stride <= context, got {context}, {stride}.")
    spans, scored_until = [], 1  # position 0 has no left context and is never scored
    for begin in range(0, max(total - 1, 1), stride):
        end = min(begin + context, total)
        if end <= scored_until:
            break
        spans.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        if end == total:
            break
    return spans


def perplexity(ids: np.ndarray, token_logprobs: Callable[[np.ndarray], np.ndarray], context: int,
               stride: Optional[int] = None, on_window: Callable[[int, int], None] = lambda i, n: None
               ) -> PerplexityResult:
    spans = windows(len(ids), context, stride or context)
    total_nll, count = 0.0, 0
    for i, (begin, end, first) in enumerate(spans):
        logprobs = token_logprobs(ids[begin:end])  # scores positions begin+1 .. end-1
        scored = logprobs[first - begin - 1:]
        total_nll -= float(scored.sum())
        count += len(scored)
        on_window(i + 1, len(spans))
    nll = total_nll / count
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=count, windows=len(spans))


@dataclass
class StreamPerplexityResult:
    perplexity: float
    nll: float
    tokens: int
    segment_perplexities: list[float]  # per consecutive block of ``segment`` scored tokens
    segment: int


def stream_perplexity(logprobs: np.ndarray, segment: int) -> StreamPerplexityResult:
    """logprobs (L-1,) of one stream, as ``BackendScorer.stream_logprobs`` returns them."""
    nll = -float(np.mean(logprobs))
    blocks = [logprobs[i:i + segment] for i in range(0, len(logprobs), segment)]
    return StreamPerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=len(logprobs),
                                  segment_perplexities=[round(math.exp(-float(np.mean(b))), 4) for b in blocks],
                                  segment=segment)
