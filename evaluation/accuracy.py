"""Multiple-choice accuracy: the choice with the highest total log-probability given the context wins.

The set is JSON lines: ``{"context": str, "choices": [str, ...], "label": int}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from planforge.errors import PlanforgeError


class AccuracySetError(PlanforgeError):
    """The accuracy set file is missing or malformed."""


@dataclass
class AccuracyResult:
    accuracy: float
    items: int


def load_items(path: Path) -> list[dict]:
    try:
        items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise AccuracySetError(f"cannot read the accuracy set {path}: {exc}") from None
    for n, item in enumerate(items):
        if not (isinstance(item.get("choices"), list) and isinstance(item.get("label"), int)
                and 0 <= item["label"] < len(item["choices"]) and isinstance(item.get("context"), str)):
            raise AccuracySetError(f"{path} line {n + 1}: need {{'context': str, 'choices': [str], 'label': int}}.")
    if not items:
        raise AccuracySetError(f"{path} holds no items.")
    return items


def accuracy(items: list[dict], encode: Callable[[str, bool], list[int]],
             continuation_logprobs: Callable[[np.ndarray, list[np.ndarray]], list[float]],
             on_item: Callable[[int, int], None] = lambda i, n: None) -> AccuracyResult:
    correct = 0
    for i, item in enumerate(items):
        context = np.array(encode(item["context"], True), dtype=np.int64)
        continuations = [np.array(encode(choice, False), dtype=np.int64) for choice in item["choices"]]
        scores = continuation_logprobs(context, continuations)
        correct += int(np.argmax(scores) == item["label"])
        on_item(i + 1, len(items))
    return AccuracyResult(accuracy=correct / len(items), items=len(items))
