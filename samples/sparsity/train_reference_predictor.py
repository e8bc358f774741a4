"""Trains the sparsity predictor shipped with the reference model.

    python samples/sparsity/train_reference_predictor.py

writes samples/reference_model/sparsity_predictor.safetensors: plainact importance on 64 windows
of 256 tokens from the last quarter of heldout.txt (the perplexity scores only the start of the
file), then the single ShadowLLM predictor with 128-wide hidden layers (fp32, 6.4 MB), 10 epochs,
seed 0. About 2 minutes on 2 CPU cores. The same steps as

    planforge sparsity importance samples/reference_model --calib LAST_QUARTER.txt -o imp.safetensors --samples 64
    planforge sparsity train-predictor imp.safetensors -o samples/reference_model/sparsity_predictor.safetensors

without the 1 GB intermediate importance file. ``samples/sparsity_results.py`` imports
``reference_predictor`` from here to train its l2 + per-layer (DejaVu) predictor the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODEL = ROOT / "samples" / "reference_model"


def calibration_text(model_dir: Path) -> str:
    """The last quarter of heldout.txt: never scored by the demo's or the results' perplexity."""
    text = (model_dir / "heldout.txt").read_text()
    return text[3 * len(text) // 4:]


def reference_predictor(hf_model, tokenizer, text: str, criterion: str = "plainact", kind: str = "single",
                        samples: int = 64, seq_len: int = 256, epochs: int = 10, head_hidden: int = 128,
                        neuron_hidden: int = 128, seed: int = 0, show_progress: bool = True):
    """Importance on ``samples`` windows of ``text`` -> TrainResult (predictor + held-out Spearman)."""
    from rich.progress import Progress

    from planforge.sparsity.importance import calibration_windows, compute_importance
    from planforge.sparsity.training import TrainOptions, train_predictor

    windows = calibration_windows(tokenizer.encode(text, add_special_tokens=False), samples, seq_len, "calibration")
    options = TrainOptions(kind=kind, head_hidden=head_hidden, neuron_hidden=neuron_hidden, epochs=epochs, seed=seed)
    fits = 1 if kind == "single" else hf_model.config.num_hidden_layers
    with Progress(disable=not show_progress) as progress:
        scoring = progress.add_task(f"{criterion} importance", total=len(windows))
        importance = compute_importance(hf_model, windows, criterion,
                                        on_batch=lambda done, total: progress.update(scoring, completed=done))
        training = progress.add_task(f"train {kind} predictor", total=epochs * fits)
        return train_predictor(importance, options, on_epoch=lambda: progress.advance(training))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REFERENCE_MODEL, help="model dir with heldout.txt")
    parser.add_argument("-o", "--output", type=Path, default=REFERENCE_MODEL / "sparsity_predictor.safetensors")
    parser.add_argument("--criterion", default="plainact", choices=("plainact", "l2", "fisher"))
    parser.add_argument("--kind", default="single", choices=("single", "per_layer"))
    parser.add_argument("--samples", type=int, default=64, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--head-hidden", type=int, default=128)
    parser.add_argument("--neuron-hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from planforge.exporter.loading import load_model, load_tokenizer

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    result = reference_predictor(model, tokenizer, calibration_text(args.model), args.criterion, args.kind,
                                 args.samples, args.seq_len, args.epochs, args.head_hidden, args.neuron_hidden, args.seed)
    result.predictor.save(args.output)
    print(f"held-out Spearman ({result.heldout_tokens} tokens), per layer:")
    print("  heads:  ", " ".join(f"{r:.3f}" for r in result.spearman_heads), f"(mean {np.mean(result.spearman_heads):.3f})")
    print("  neurons:", " ".join(f"{r:.3f}" for r in result.spearman_neurons), f"(mean {np.mean(result.spearman_neurons):.3f})")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
