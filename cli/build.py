"""planforge build MODEL -o OUT --target torch"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

NAME = "build"


class BuildTarget(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


def command(
    model: Annotated[Path, typer.Argument(help="Portable compiled model directory: the output of `planforge export`, or of `planforge optimize --target portable`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to create with the lowered model.onnx, its planforge.json (target, plugin op versions, I/O contract) and the tokenizer.")],
    target: Annotated[BuildTarget, typer.Option(help="torch: attention and the KV cache lowered onto planforge's plugin ops (KVCacheUpdate, FusedAttentionPrefill/Decode) with a preallocated in-place cache, run by --backend torch (the graph TensorRT parses). onnxruntime: quantized linears and the token table onto ONNX Runtime's own kernels, as `optimize --target onnxruntime`.")] = BuildTarget.torch,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="--target torch: where a lowering rule refuses a node (its reason is printed), keep the graph's standard ops there instead of failing; the torch backend runs them.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists (only when the run succeeds, and only a planforge output or an empty directory; never the working directory).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Lower a portable compiled model for one backend: planforge's plugin ops for torch (and TensorRT), or ONNX Runtime's kernels."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.lower_plugins import summarize
    from planforge.manifest import model_file_bytes

    options = OptimizeOptions(target=target.value, allow_partial=allow_partial, force=force, show_progress=not quiet)
    manifest, reports = optimize(model, output, options)
    for report in reports:
        typer.echo(f"{report.name}: {report.matches} rewritten")
        if report.refusals:
            typer.echo(f"  kept as standard ops: {summarize(report.refusals)}")
    ops = ", ".join(f"{name} v{version}" for name, version in manifest.plugin_ops.items()) or "none"
    typer.echo(f"wrote {output} ({model_file_bytes(output) / 1e6:.1f} MB model, target {manifest.target}, "
               f"plugin ops: {ops})")
