"""planforge sparsity: importance scoring and predictor training for contextual sparsity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

NAME = "sparsity"

app = typer.Typer(name=NAME, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Contextual sparsity (ShadowLLM / DejaVu): score head and neuron importance, train predictors. "
                       "See docs/sparsity.md.")


@app.command("importance")
def importance(
    model: Annotated[str, typer.Argument(help="Hugging Face model directory (Llama-style: Llama, Mistral, Qwen2) with its tokenizer.")],
    calib: Annotated[Path, typer.Option(help="Calibration text file (UTF-8). Use text the evaluation never scores.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Importance file to write (.safetensors).")],
    criterion: Annotated[str, typer.Option(help="plainact: |sum a*dL/da| (ShadowLLM); l2: activation norm (DejaVu); fisher: (sum a*dL/da)^2.")] = "plainact",
    samples: Annotated[int, typer.Option(help="Calibration windows to score (fewer if the text is shorter).")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window; each window is one forward and one backward pass.")] = 256,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Score every attention head and MLP neuron per token on calibration text (one backward per window)."""
    from planforge.sparsity.importance import importance_from_text

    result = importance_from_text(model, calib, output, criterion=criterion, samples=samples, seq_len=seq_len,
                                  force=force, show_progress=not quiet)
    h = result.header
    typer.echo(f"wrote {output}: {criterion} importance of {h.num_layers}x{h.num_heads} heads and "
               f"{h.num_layers}x{h.intermediate_size} neurons over {len(result.tensors['window'])} tokens "
               f"({h.windows} windows of {h.seq_len})")


@app.command("train-predictor")
def train_predictor(
    importance_file: Annotated[Path, typer.Argument(metavar="IMPORTANCE", help="Importance file written by `planforge sparsity importance`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Predictor file to write (.safetensors).")],
    kind: Annotated[str, typer.Option(help="single: one ShadowLLM predictor from the layer-0 attention output; per_layer: one DejaVu predictor per layer from its input.")] = "single",
    head_hidden: Annotated[int, typer.Option(help="Hidden width of the head scorer (ShadowLLM uses 2048 on 7B+ models).")] = 128,
    neuron_hidden: Annotated[int, typer.Option(help="Hidden width of the neuron scorer (ShadowLLM uses 1024 on 7B+ models).")] = 128,
    epochs: Annotated[int, typer.Option(help="Passes over the training tokens.")] = 10,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine-decayed to 0).")] = 2e-3,
    holdout: Annotated[float, typer.Option(help="Fraction of calibration windows held out for the Spearman report.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed for initialization and batch order.")] = 0,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store the tensors in fp16 (half the file; loaded as fp32).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Train a sparsity predictor on an importance file; print held-out Spearman correlation per layer."""
    from planforge.sparsity.training import run_training

    run_training(importance_file, output, kind=kind, head_hidden=head_hidden, neuron_hidden=neuron_hidden,
                 epochs=epochs, lr=lr, holdout=holdout, seed=seed, fp16=fp16, force=force, show_progress=not quiet)
