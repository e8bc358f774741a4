"""``planforge demo``: export the shipped reference model, run every optimization planforge has so far,
generate on ONNX Runtime, and tabulate size, speed, perplexity, accuracy and agreement.

Variants today: the transformers source (run in fp32 with torch) as the baseline, the
exported fp32 ONNX model, the fp16 export, W4A16 of the fp32 export (4-bit weights in
blocks of 32), QUIK W4A4 of the fp32 export (3% float outlier columns, INT8 down_proj, RTN
weights; calibrated on the last quarter of the held-out file, which the perplexity never
reaches), both lowered onto ONNX Runtime's integer and 4-bit kernels (``optimize``'s default
``--target onnxruntime``; the fp32 export is the base because ONNX Runtime's CPU kernels
compute fp16 in float32 anyway), and contextual sparsity of the fp32 export (50% of heads
and 50% of MLP neurons skipped per token, picked by the shipped predictor; only where the
model directory has one). Each later pass adds a row. After the table, the streaming
model (4 attention sinks + a rolling window, ``optimize --streaming``) is scored token by token over
a stream 4x the trained context, against sliding windows re-computed on the fp32 export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import planforge
from planforge.errors import ModelNotFoundError
from planforge.evaluation.accuracy import accuracy, load_items
from planforge.evaluation.perplexity import perplexity
from planforge.evaluation.scorers import BackendScorer, TransformersScorer, gather_logprobs
from planforge.manifest import model_file_bytes

REFERENCE_MODEL = Path(planforge.__file__).resolve().parent / "samples" / "reference_model"
SPARSITY_PREDICTOR = "sparsity_predictor.safetensors"
STREAM_CONTEXTS = 4  # the streaming check's stream length, in trained contexts
PROMPTS = ("The Python interpreter", "To open a file, use", "A list comprehension")


@dataclass
class VariantRow:
    name: str
    size_mb: float
    decode_tokens_per_s: Optional[float]
    perplexity: float
    accuracy: float
    top1_agreement: Optional[float]  # vs the fp32 ONNX model, over every predicted held-out position


@dataclass
class StreamingRow:
    """The streaming model (sinks + rolling window) over a stream several times its trained context."""

    sink_tokens: int
    window: int
    tokens: int  # scored stream length
    context: int
    stream_perplexity: float  # token by token through the constant-size cache
    windowed_perplexity: float  # the fp32 export, sliding windows re-computed every context/4 tokens


@dataclass
class DemoResult:
    rows: list[VariantRow]
    samples: list[tuple[str, str]]
    streaming: Optional[StreamingRow] = None


class _PredictionRecorder:
    """token_logprobs for the perplexity pass that also keeps each window's argmax predictions,
    so agreement between variants needs no extra forward passes."""

    def __init__(self, scorer):
        self.scorer, self.predictions = scorer, []

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        logits = self.scorer.window_logits(ids)  # (L, V)
        self.predictions.append(logits[:-1].argmax(-1))
        return gather_logprobs(logits, ids)

    def all_predictions(self) -> np.ndarray:
        return np.concatenate(self.predictions)


def _decode_speed(scorer: BackendScorer, prompts: list[list[int]], new_tokens: int
                  ) -> tuple[float, list[list[int]]]:
    from planforge.runtime import GenerationConfig, Generator

    generator = Generator(scorer.backend)
    config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    generator.generate(prompts[:1], GenerationConfig(max_new_tokens=2))  # warm-up
    start = time.perf_counter()
    result = generator.generate(prompts, config)
    return result.new_token_count / (time.perf_counter() - start), result.tokens


def _quantize(model: Path, fp32_dir: Path, out: Path, name: str, quant, force: bool) -> Path:
    from planforge.graph_passes.api import OptimizeOptions, optimize

    text = (model / "heldout.txt").read_text()
    calibration = out / "calibration.txt"  # the last quarter: perplexity scores only the start of the file
    calibration.write_text(text[3 * len(text) // 4:])
    optimize(fp32_dir, out / name, OptimizeOptions(quant=quant, calib=calibration, calib_samples=32, force=force))
    return out / name


def _sparsify(predictor: Path, fp32_dir: Path, out: Path, force: bool) -> Path:
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.contextual_sparsity import SparsityOptions

    optimize(fp32_dir, out / "sparse", OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor), force=force))
    return out / "sparse"


def _streaming(fp32_dir: Path, out: Path, text_ids: np.ndarray, force: bool, backend: Optional[str], device: str
               ) -> StreamingRow:
    from planforge.evaluation.perplexity import stream_perplexity
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.streaming_attention import StreamingOptions

    plain = BackendScorer(fp32_dir, backend, device)
    context = plain.context_length
    options = StreamingOptions(sink_tokens=4, window=context - 4)
    optimize(fp32_dir, out / "streaming", OptimizeOptions(streaming=options, force=force))
    ids = text_ids[:STREAM_CONTEXTS * context + 1]
    streamed = stream_perplexity(BackendScorer(out / "streaming", backend, device).stream_logprobs(ids), segment=len(ids))
    windowed = perplexity(ids, plain.token_logprobs, context, stride=context // 4)
    return StreamingRow(options.sink_tokens, options.window, streamed.tokens, context, streamed.perplexity,
                        windowed.perplexity)


def run_demo(model: Path, out: Path, max_tokens: int, new_tokens: int = 48, force: bool = True,
             status: Callable[[str], None] = print, backend: Optional[str] = None, device: str = "cpu",
             accuracy_items: Optional[int] = None) -> DemoResult:
    from planforge.exporter.api import ExportOptions, export
    from planforge.runtime import Tokenizer

    model = Path(model)
    if not (model / "config.json").is_file():
        raise ModelNotFoundError(f"{model} is not a Hugging Face model directory; the demo needs "
                                 "samples/reference_model from a planforge checkout, or pass --model DIR.")
    start = time.perf_counter()
    report = lambda message: status(f"[{time.perf_counter() - start:5.0f} s] {message}")  # noqa: E731
    variants = {"onnx fp32": out / "fp32", "onnx fp16": out / "fp16"}
    for name, directory in variants.items():
        report(f"exporting {name} -> {directory}")
        export(str(model), directory, ExportOptions(dtype=name.split()[-1], force=force))
    from planforge.graph_passes.schemes import QuantOptions

    report(f"quantizing onnx fp32 to W4A16 (blocks of 32) -> {out / 'w4a16'}")
    variants["onnx W4A16"] = _quantize(model, variants["onnx fp32"], out, "w4a16", QuantOptions("w4a16", group=32),
                                       force)
    report(f"quantizing onnx fp32 to W4A4 (QUIK) -> {out / 'w4a4'}")
    variants["onnx W4A4 (QUIK)"] = _quantize(model, variants["onnx fp32"], out, "w4a4",
                                             QuantOptions("w4a4", weight_method="rtn"), force)
    predictor = model / SPARSITY_PREDICTOR
    if predictor.is_file():  # shipped with the reference model; another --model has none
        report(f"contextual sparsity (50% heads, 50% neurons) of onnx fp32 -> {out / 'sparse'}")
        variants["contextual sparsity 50%"] = _sparsify(predictor, variants["onnx fp32"], out, force)

    tokenizer = Tokenizer(variants["onnx fp32"])
    text_ids = np.array(tokenizer.encode((model / "heldout.txt").read_text()), dtype=np.int64)[:max_tokens]
    items = load_items(model / "accuracy.jsonl")[:accuracy_items]
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    scored = [("transformers (source)", TransformersScorer(model), None)]
    scored += [(name, BackendScorer(directory, backend, device), directory) for name, directory in variants.items()]
    rows, samples, predictions = [], [], {}
    for name, scorer, directory in scored:
        report(f"perplexity and accuracy of {name}")
        recorder = _PredictionRecorder(scorer)
        ppl = perplexity(text_ids, recorder, scorer.context_length).perplexity
        acc = accuracy(items, tokenizer.encode, scorer.continuation_logprobs).accuracy
        speed, size = None, sum(f.stat().st_size for f in model.glob("model*.safetensors")) / 1e6
        if directory is not None:
            report(f"generating with {name}")
            speed, tokens = _decode_speed(scorer, prompts, new_tokens)
            size = model_file_bytes(directory) / 1e6
            samples = samples or [(p, tokenizer.decode(t)) for p, t in zip(PROMPTS, tokens)]
        predictions[name] = recorder.all_predictions()
        rows.append(VariantRow(name, size, speed, ppl, acc, top1_agreement=None))
    for row in rows:  # agreement with the exported fp32 model, position by position
        row.top1_agreement = float(np.mean(predictions[row.name] == predictions["onnx fp32"]))
    report(f"streaming (sinks + rolling window) over {STREAM_CONTEXTS}x the context -> {out / 'streaming'}")
    streaming = _streaming(variants["onnx fp32"], out, text_ids, force, backend, device)
    report("done")
    return DemoResult(rows, samples, streaming)
