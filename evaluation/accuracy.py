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
    """The set's items; a problem is reported with its line number in the file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise AccuracySetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise AccuracySetError(f"cannot read the accuracy set {path}: {exc.strerror or exc}.") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AccuracySetError(f"{path} line {number}: not JSON ({exc.msg} at column {exc.colno}).") from None
        if not (isinstance(item, dict) and isinstance(item.get("choices"), list) and item["choices"]
                and all(isinstance(c, str) and c for c in item["choices"])
                and isinstance(item.get("label"), int) and not isinstance(item["label"], bool)
                and 0 <= item["label"] < len(item["choices"]) and isinstance(item.get("context"), str)):
            raise AccuracySetError(f"{path} line {number}: need {{'context': str, 'choices': [non-empty str], "
                                   "'label': index of the right choice}} (a boolean is not a label).")
        items.append(item)
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
