"""planforge build MODEL -o OUT --target torch | onnxruntime | tensorrt"""

from __future__ import annotations

import importlib.util
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "build"


class BuildTarget(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


def command(
    model: Annotated[Path, typer.Argument(help="Portable compiled model directory: the output of `planforge export`, or of `planforge optimize --target portable`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to create with the lowered model.onnx, its planforge.json (target, plugin op versions, I/O contract) and the tokenizer; for tensorrt also engine.plan and timing.cache.")],
    target: Annotated[BuildTarget, typer.Option(help="torch: attention and the KV cache lowered onto planforge's plugin ops (KVCacheUpdate, FusedAttentionPrefill/Decode) with a preallocated in-place cache, run by --backend torch. tensorrt: that plugin graph prepared for TensorRT's ONNX parser and built into an engine (needs TensorRT >= 10.9 and triton; a float16 or bfloat16 model), run by --backend tensorrt. onnxruntime: quantized linears and the token table onto ONNX Runtime's own kernels, as `optimize --target onnxruntime`.")] = BuildTarget.torch,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="--target torch/tensorrt: where a lowering rule refuses a node (its reason is printed), keep the graph's standard ops there instead of failing.")] = False,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="--target tensorrt: the most sequences one step takes (both profiles).")] = 8,
    opt_batch: Annotated[int, typer.Option("--opt-batch", min=1, help="--target tensorrt: the batch size TensorRT tunes for.")] = 1,
    max_prefill: Annotated[Optional[int], typer.Option("--max-prefill", min=1, help="--target tensorrt: the longest prompt, in tokens per sequence, of the prefill profile. Default: min(2048, the cache length).")] = None,
    opt_prefill: Annotated[Optional[int], typer.Option("--opt-prefill", min=1, help="--target tensorrt: the prompt length TensorRT tunes prefill for. Default: min(128, --max-prefill).")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="--target tensorrt: a timing cache file to start from and update (later builds of similar models go faster). The engine directory keeps a copy either way.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists (only when the run succeeds, and only a planforge output or an empty directory; never the working directory).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Lower a portable compiled model for one backend: planforge's plugin ops for torch, a TensorRT engine, or ONNX Runtime's kernels."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.lower_plugins import summarize
    from planforge.manifest import model_file_bytes

    finish = None
    if target is BuildTarget.tensorrt:
        finish = _engine_builder(max_batch, opt_batch, max_prefill, opt_prefill, timing_cache, quiet)
    options = OptimizeOptions(target=target.value, allow_partial=allow_partial, force=force, show_progress=not quiet)
    manifest, reports = optimize(model, output, options, finish=finish)
    for report in reports:
        typer.echo(f"{report.name}: {report.matches} rewritten")
        if report.refusals:
            typer.echo(f"  kept as standard ops: {summarize(report.refusals)}")
    ops = ", ".join(f"{name} v{version}" for name, version in manifest.plugin_ops.items()) or "none"
    typer.echo(f"wrote {output} ({model_file_bytes(output) / 1e6:.1f} MB model, target {manifest.target}, "
               f"plugin ops: {ops})")


def _engine_builder(max_batch, opt_batch, max_prefill, opt_prefill, timing_cache, quiet):
    """The engine step of --target tensorrt, after TensorRT is known to be there (else: exit 2, nothing written)."""
    from planforge.errors import BackendUnavailableError
    from planforge.runtime.tensorrt_engine import EngineSettings, build_engine, require_tensorrt

    require_tensorrt()
    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailableError("Triton is not installed: `pip install triton` (it compiles the AOT plugins' "
                                      "kernels). Nothing was written.")
    settings = EngineSettings(max_batch, opt_batch, max_prefill, opt_prefill, timing_cache)

    def finish(directory: Path, manifest) -> None:
        if not quiet:
            typer.echo("building the TensorRT engine (TensorRT prints its own progress) ...")
        manifest.tensorrt = build_engine(directory, manifest, settings)

    return finish
