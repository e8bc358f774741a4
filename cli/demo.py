"""planforge demo"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from planforge.cli.options import BackendOption, Device, DeviceOption

NAME = "demo"


def command(
    model: Annotated[Path, typer.Option(help="Hugging Face model directory with heldout.txt and accuracy.jsonl beside the weights.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where the compiled variants are written (replaced if present).")] = Path("out/demo"),
    max_tokens: Annotated[int, typer.Option(help="Held-out tokens to score for perplexity and agreement.")] = 8192,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per prompt for the samples and the decode speed.")] = 48,
    accuracy_items: Annotated[int, typer.Option(min=1, help="Multiple-choice items scored per variant (the first N of accuracy.jsonl).")] = 150,
    backend: BackendOption = None,
    device: DeviceOption = Device.cpu,
):
    """Export the shipped reference model, apply every available optimization, generate on ONNX Runtime (CPU), and print a results table."""
    from rich.console import Console
    from rich.table import Table

    from planforge.evaluation.demo import REFERENCE_MODEL, run_demo

    console = Console()
    result = run_demo(model or REFERENCE_MODEL, output, max_tokens, new_tokens,
                      status=lambda message: console.print(f"[dim]{message}[/]"), backend=backend,
                      device=device.value, accuracy_items=accuracy_items)
    for prompt, text in result.samples:
        console.print(f"[bold]{prompt}[/]{text}\n")
    table = Table(title=f"planforge demo: {(model or REFERENCE_MODEL).name}, held-out text, ONNX Runtime CPU")
    for column in ("variant", "size MB", "decode tok/s", "perplexity", "accuracy", "top-1 agree vs onnx fp32"):
        table.add_column(column, justify="right")
    for row in result.rows:
        table.add_row(row.name, f"{row.size_mb:.1f}", "—" if row.decode_tokens_per_s is None else f"{row.decode_tokens_per_s:.0f}",
                      f"{row.perplexity:.3f}", f"{100 * row.accuracy:.1f}%",
                      f"{100 * row.top1_agreement:.2f}%")
    console.print(table)
    stream = result.streaming
    if stream is not None:
        console.print(
            f"streaming ({stream.sink_tokens} sinks + {stream.window} window, a constant {stream.sink_tokens + stream.window}"
            f"-position KV cache): perplexity {stream.stream_perplexity:.3f} over a {stream.tokens}-token stream "
            f"({stream.tokens // stream.context}x the context), token by token; {stream.windowed_perplexity:.3f} with "
            f"sliding windows re-computed every {stream.context // 4} tokens. Without --streaming the model stops at "
            f"{stream.context} tokens.")
