"""``planforge demo``: export the shipped reference model, run every optimization planforge has so far,
generate on ONNX Runtime, and tabulate size, speed, perplexity, accuracy and agreement.

Variants today: the transformers source (fp32, torch) as the baseline, the
exported fp32 ONNX model, and the fp16 export. Each later pass adds a row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import planforge
from planforge import constants
from planforge.errors import ModelNotFoundError
from planforge.evaluation.accuracy import accuracy, load_items
from planforge.evaluation.perplexity import perplexity
from planforge.evaluation.scorers import CompiledScorer, TransformersScorer

REFERENCE_MODEL = Path(planforge.__file__).resolve().parent / "samples" / "reference_model"
PROMPTS = ("The Python interpreter", "To open a file, use", "A list comprehension")


@dataclass
class VariantRow:
    name: str
    size_mb: float
    decode_tokens_per_s: Optional[float]
    perplexity: float
    accuracy: float
    top1_agreement: Optional[float]  # vs the fp32 ONNX model, over the scored held-out tokens


@dataclass
class DemoResult:
    rows: list[VariantRow]
    samples: list[tuple[str, str]]


def _dir_size_mb(directory: Path) -> float:
    files = [directory / constants.MODEL_FILE, directory / constants.EXTERNAL_DATA_FILE]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def _argmax_agreement(a: CompiledScorer, b: CompiledScorer, ids: np.ndarray, context: int) -> float:
    agree = total = 0
    for begin in range(0, len(ids) - 1, context):
        window = ids[begin:begin + context][None]
        la, lb = a.session.run_prefill(window)[0], b.session.run_prefill(window)[0]  # (L, V)
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        total += la.shape[0]
    return agree / total


def _decode_speed(model_dir: Path, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    from planforge.runtime import GenerationConfig, Generator, Session

    generator = Generator(Session(model_dir))
    config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    generator.generate(prompts[:1], GenerationConfig(max_new_tokens=2))  # warm-up
    start = time.perf_counter()
    result = generator.generate(prompts, config)
    return result.new_token_count / (time.perf_counter() - start), result.tokens


def run_demo(model: Path, out: Path, max_tokens: int, new_tokens: int = 48, force: bool = True,
             status: Callable[[str], None] = print) -> DemoResult:
    from planforge.exporter.api import ExportOptions, export
    from planforge.runtime import Tokenizer

    model = Path(model)
    if not (model / "config.json").is_file():
        raise ModelNotFoundError(f"{model} is not a Hugging Face model directory; the demo needs "
                                 "samples/reference_model from a planforge checkout, or pass --model DIR.")
    heldout, accuracy_set = model / "heldout.txt", model / "accuracy.jsonl"
    variants = {"onnx fp32": out / "fp32", "onnx fp16": out / "fp16"}
    for name, directory in variants.items():
        status(f"exporting {name} -> {directory}")
        export(str(model), directory, ExportOptions(dtype=name.split()[-1], force=force))

    tokenizer = Tokenizer(variants["onnx fp32"])
    text_ids = np.array(tokenizer.encode(heldout.read_text()), dtype=np.int64)[:max_tokens]
    items = load_items(accuracy_set)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    reference = CompiledScorer(variants["onnx fp32"])
    rows = []
    status("scoring transformers fp32 (baseline)")
    source = TransformersScorer(model)
    context = reference.context_length
    rows.append(VariantRow("transformers fp32", sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e6,
                           None, perplexity(text_ids, source.token_logprobs, context).perplexity,
                           accuracy(items, tokenizer.encode, source.continuation_logprobs).accuracy, None))
    samples = []
    for name, directory in variants.items():
        status(f"scoring {name}")
        scorer = reference if name == "onnx fp32" else CompiledScorer(directory)
        speed, tokens = _decode_speed(directory, prompts, new_tokens)
        if name == "onnx fp32":
            samples = [(p, tokenizer.decode(t)) for p, t in zip(PROMPTS, tokens)]
        rows.append(VariantRow(
            name, _dir_size_mb(directory), speed,
            perplexity(text_ids, scorer.token_logprobs, context).perplexity,
            accuracy(items, tokenizer.encode, scorer.continuation_logprobs).accuracy,
            _argmax_agreement(reference, scorer, text_ids, context)))
    return DemoResult(rows, samples)
