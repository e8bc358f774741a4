"""``compare_models``: Polygraphy accuracy comparison of two models over prefill and decode steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.compare.report import StepStats, step_stats
from planforge.compare.runners import BackendRunner, TransformersRunner, output_names
from planforge.errors import ComparisonError, ModelNotFoundError

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "In a hole in the ground there lived",
    "Deployment compilers turn models into",
)


@dataclass(frozen=True)
class CompareOptions:
    decode_steps: int = 8
    atol: float = 1e-4
    rtol: float = 0.0
    check_error_stat: str = "max"
    min_top1: Optional[float] = None  # fail when any step's top-1 agreement is below this fraction
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    random_prompt_tokens: int = 16  # used when neither model has a tokenizer
    seed: int = 0
    backend: Optional[str] = None  # compiled models: the backend their manifest names
    device: str = "cpu"


@dataclass
class ComparisonReport:
    runner_names: tuple[str, str]
    steps: list[StepStats]
    polygraphy_passed: bool
    top1_passed: bool
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.polygraphy_passed and self.top1_passed


def _model_kind(path: Path) -> str:
    if (path / constants.MANIFEST_FILE).is_file():
        return "compiled"
    if (path / "config.json").is_file():
        return "transformers"
    raise ModelNotFoundError(
        f"{path} is neither a planforge compiled model (no {constants.MANIFEST_FILE}) nor a Hugging Face "
        "model directory (no config.json).")


def _runner(path: Path, options: CompareOptions):
    if _model_kind(path) == "compiled":
        return BackendRunner(path, options.decode_steps, options.backend, options.device)
    return TransformersRunner(path, options.decode_steps)


def _max_seq_len(path: Path) -> int:
    """Positions a model holds: the compiled model's max_seq_len, the source's trained positions."""
    import json

    if _model_kind(path) == "compiled":
        from planforge.manifest import Manifest

        return Manifest.load(path).dims.max_seq_len
    config = json.loads((path / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 1 << 30)


def _vocab_and_tokenizer(path: Path):
    from planforge.tokenizer import TOKENIZER_FILE, Tokenizer

    if _model_kind(path) == "compiled":
        from planforge.manifest import Manifest

        vocab = Manifest.load(path).dims.vocab_size
    else:
        import json

        vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    return vocab, (Tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None)


def build_feeds(a: Path, b: Path, options: CompareOptions) -> list[dict]:
    """One feed per prompt: all its tokens are the prefill, then ``decode_steps`` seeded random
    tokens are teacher-forced one at a time through the KV cache (the same tokens for both models)."""
    (vocab_a, tok_a), (vocab_b, tok_b) = _vocab_and_tokenizer(a), _vocab_and_tokenizer(b)
    if vocab_a != vocab_b:
        raise ComparisonError(f"the models have different vocabularies ({vocab_a} vs {vocab_b}); compare "
                              "a compiled model with the model it was exported from.")
    if not options.prompts:
        raise ComparisonError("no prompts to compare on; give at least one --prompt.")
    if options.decode_steps < 0:
        raise ComparisonError(f"--decode-steps {options.decode_steps}: give 0 or more steps.")
    rng = np.random.default_rng(options.seed)
    tokenizer = tok_a or tok_b
    limit = min(_max_seq_len(a), _max_seq_len(b))
    feeds = []
    for i, prompt in enumerate(options.prompts):
        ids = tokenizer.encode(prompt) if tokenizer else rng.integers(0, vocab_a, options.random_prompt_tokens).tolist()
        if len(ids) + options.decode_steps > limit:
            raise ComparisonError(
                f"prompt {i} has {len(ids)} tokens; with {options.decode_steps} decode steps it needs "
                f"{len(ids) + options.decode_steps} positions, and the models hold {limit}. Shorten the prompt or "
                "use fewer --decode-steps.")
        ids += rng.integers(0, vocab_a, options.decode_steps).tolist()
        feeds.append({constants.INPUT_IDS: np.array([ids], dtype=np.int64)})
    return feeds


def compare_models(a: Path, b: Path, options: CompareOptions = CompareOptions()) -> ComparisonReport:
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    a, b = Path(a), Path(b)
    feeds = build_feeds(a, b, options)
    runners = [_runner(a, options), _runner(b, options)]
    # planforge prints its own table and verdict; Polygraphy's per-output lines only repeat it.
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    results = Comparator.run(runners, data_loader=feeds)
    accuracy = Comparator.compare_accuracy(
        results, compare_func=CompareFunc.simple(atol=options.atol, rtol=options.rtol,
                                                 check_error_stat=options.check_error_stat))
    (_, iterations_a), (_, iterations_b) = results[0], results[1]
    steps = [step_stats(name, [(ia[name], ib[name]) for ia, ib in zip(iterations_a, iterations_b)])
             for name in output_names(options.decode_steps)]
    top1_failures = [f"{s.output}: top-1 agreement {s.top1:.3f} < {options.min_top1}"
                     for s in steps if options.min_top1 is not None and s.top1 < options.min_top1]
    tolerance_failures = [] if bool(accuracy) else [
        f"logits differ beyond atol={options.atol}, rtol={options.rtol} ({options.check_error_stat} error)"]
    return ComparisonReport((runners[0].name, runners[1].name), steps, polygraphy_passed=bool(accuracy),
                            top1_passed=not top1_failures, failures=tolerance_failures + top1_failures)
