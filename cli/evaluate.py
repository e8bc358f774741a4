"""planforge eval MODEL --ppl TEXT [--accuracy SET]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from planforge.cli.options import BackendOption, Device, DeviceOption

NAME = "eval"


def command(
    model: Annotated[Path, typer.Argument(help="A compiled model directory (run on --backend) or a Hugging Face model directory (transformers).")],
    ppl: Annotated[Optional[Path], typer.Option("--ppl", help="Plain-text file to compute perplexity on.")] = None,
    accuracy: Annotated[Optional[Path], typer.Option("--accuracy", help="Multiple-choice set, JSON lines {context, choices, label}.")] = None,
    context: Annotated[Optional[int], typer.Option(min=2, help="Window length in tokens (>= 2, at most the model's context). Default: the model's max sequence length.")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Tokens between window starts (1 to --context). Default: the window length (disjoint windows, the GPTQ/QUIK WikiText2 protocol).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=2, help="Score only the first N tokens of the text (>= 2).")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Perplexity of one continuous stream (the first --max-tokens tokens), token by token through the compiled model's KV cache, as in StreamingLLM; also reports it per --context block. A model optimized with --streaming takes any length; a full-cache model at most its max_seq_len.")] = False,
    backend: BackendOption = None,
    device: DeviceOption = Device.cpu,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Perplexity (strided sliding window) and multiple-choice accuracy; ends with one JSON result line."""
    from planforge.errors import InvalidPromptError
    from planforge.evaluation.api import evaluate

    if ppl is None and accuracy is None:
        raise InvalidPromptError("nothing to evaluate: give --ppl TEXT, --accuracy SET, or both.")
    result = evaluate(model, ppl, accuracy, context=context, stride=stride, max_tokens=max_tokens,
                      backend=backend, device=device.value, show_progress=not quiet, stream=stream)
    typer.echo("RESULT " + json.dumps(result, sort_keys=True))
