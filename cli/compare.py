"""planforge compare A B"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from planforge.cli.options import BackendOption, Device, DeviceOption

NAME = "compare"


class ErrorStat(str, Enum):
    max = "max"
    mean = "mean"
    median = "median"
    elemwise = "elemwise"


def command(
    model_a: Annotated[Path, typer.Argument(help="A compiled model directory (run on --backend), or a Hugging Face model directory (run with transformers).")],
    model_b: Annotated[Path, typer.Argument(help="The model to compare against, of either kind.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Prompt to compare on; repeatable. Default: 4 built-in prompts.")] = None,
    decode_steps: Annotated[int, typer.Option(min=0, help="Teacher-forced decode steps through the KV cache after the prefill (>= 0).")] = 8,
    atol: Annotated[float, typer.Option(help="Absolute logit tolerance (Polygraphy CompareFunc.simple).")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative logit tolerance.")] = 0.0,
    check_error_stat: Annotated[ErrorStat, typer.Option(help="Which error statistic must be within tolerance.")] = ErrorStat.max,
    min_top1: Annotated[Optional[float], typer.Option(help="Also fail when any step's top-1 agreement (0..1) is below this.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random tokens that pad short prompts.")] = 0,
    backend: BackendOption = None,
    device: DeviceOption = Device.cpu,
):
    """Compare two models' logits over prefill and decode steps with Polygraphy; exit 1 when out of tolerance."""
    from rich.console import Console

    from planforge.compare.api import DEFAULT_PROMPTS, CompareOptions, compare_models
    from planforge.compare.report import render

    options = CompareOptions(decode_steps=decode_steps, atol=atol, rtol=rtol, check_error_stat=check_error_stat.value,
                             min_top1=min_top1, prompts=tuple(prompt or DEFAULT_PROMPTS), seed=seed, backend=backend,
                             device=device.value)
    report = compare_models(model_a, model_b, options)
    console = Console()
    console.print(render(report.steps, f"{report.runner_names[0]} vs {report.runner_names[1]}"))
    if report.passed:
        console.print(f"[green]PASSED[/]: within atol={atol}, rtol={rtol} ({check_error_stat.value} error)")
        return
    for failure in report.failures:
        console.print(f"[red]FAILED[/]: {failure}")
    raise typer.Exit(code=1)
