"""Per-step agreement statistics between two runners' logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StepStats:
    output: str
    max_abs: float
    mean_abs: float
    cosine: float  # mean over positions of the cosine similarity of the logit vectors
    top1: float  # fraction of positions whose argmax agrees
    positions: int


def step_stats(output: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> StepStats:
    """``pairs`` holds (a, b) logits (1, S, V) for one output, one pair per prompt."""
    a = np.concatenate([x.reshape(-1, x.shape[-1]) for x, _ in pairs]).astype(np.float64)  # (N, V)
    b = np.concatenate([y.reshape(-1, y.shape[-1]) for _, y in pairs]).astype(np.float64)
    diff = np.abs(a - b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = np.sum(a * b, axis=-1) / np.maximum(norms, 1e-30)
    return StepStats(output, float(diff.max()), float(diff.mean()), float(cosine.mean()),
                     float(np.mean(a.argmax(-1) == b.argmax(-1))), a.shape[0])


def render(stats: list[StepStats], title: str):
    from rich.table import Table

    table = Table(title=title)
    for column in ("step", "positions", "max |Δ|", "mean |Δ|", "cosine", "top-1 agree"):
        table.add_column(column, justify="right")
    for s in stats:
        table.add_row(s.output.removesuffix("_logits"), str(s.positions), f"{s.max_abs:.3e}", f"{s.mean_abs:.3e}",
                      f"{s.cosine:.6f}", f"{100 * s.top1:.1f}%")
    return table
