"""``optimize()``: compiled model directory -> a new one with graph passes applied.

load -> ``pipeline.PASSES`` (each pass built from the options, its preconditions checked
before any expensive work) -> save. OUT is refused up front if it exists without
--force, and written atomically, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx_ir as ir
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planforge import constants
from planforge.atomic import atomic_output_dir, refuse_existing
from planforge.genai_config import GENAI_CONFIG_FILE, write_genai_config
from planforge.graph_passes.base import PassContext, PassReport
from planforge.graph_passes.options import OPTIMIZE_TARGETS, OptimizeOptions
from planforge.graph_passes.pipeline import Pipeline, build_passes
from planforge.graph_passes.schemes import QuantizationError
from planforge.manifest import PORTABLE, Manifest

__all__ = ["OptimizeOptions", "optimize"]


def _load(model_dir: Path, options: OptimizeOptions) -> tuple[Manifest, ir.Model]:
    if options.target not in OPTIMIZE_TARGETS:
        raise QuantizationError(f"--target {options.target!r} is not one of {', '.join(OPTIMIZE_TARGETS)}.")
    manifest = Manifest.load(model_dir)
    if manifest.target != PORTABLE:
        raise QuantizationError(f"{model_dir} is already lowered for {manifest.target}; optimize the portable model "
                                "it came from (`planforge export`, or `planforge optimize --target portable`).")
    return manifest, ir.load(str(model_dir / constants.MODEL_FILE))


def _save(model: ir.Model, model_dir: Path, out: Path, manifest: Manifest, force: bool, finish=None) -> None:
    with atomic_output_dir(out, force) as tmp:
        external = manifest.external_data
        ir.save(model, str(tmp / constants.MODEL_FILE),
                external_data=constants.EXTERNAL_DATA_FILE if external else None)
        for item in model_dir.iterdir():  # tokenizer and any other side files
            if item.is_file() and item.name not in (constants.MODEL_FILE, constants.EXTERNAL_DATA_FILE,
                                                    constants.MANIFEST_FILE, GENAI_CONFIG_FILE):
                shutil.copy2(item, tmp / item.name)
        if finish is not None:  # e.g. the TensorRT engine, built from the saved graph; it may extend the manifest
            finish(tmp, manifest)
        manifest.save(tmp)
        write_genai_config(tmp, manifest)


def optimize(model_dir: Path, out: Path, options: OptimizeOptions = OptimizeOptions(), finish=None
             ) -> tuple[Manifest, list[PassReport]]:
    """``finish(staging_dir, manifest)``, if given, runs on the written output before it is moved into place
    (``build --target tensorrt`` builds the engine there), so its failure leaves nothing either."""
    model_dir = Path(model_dir)
    refuse_existing(out, options.force)
    manifest, model = _load(model_dir, options)
    progress = Progress(TextColumn("[bold]optimize[/] {task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not options.show_progress)
    with progress:
        passes = build_passes(options, PassContext(model_dir, manifest, model, progress))
        reports = Pipeline(passes)(model)
    if any(graph_pass.name == "contextual_sparsity" for graph_pass in passes):
        ir.passes.common.RemoveUnusedNodesPass()(model)  # float weights a later pass replaced inside the If branches
    for graph_pass in passes:
        graph_pass.record(manifest)
    _save(model, model_dir, out, manifest, options.force, finish)
    return manifest, reports
