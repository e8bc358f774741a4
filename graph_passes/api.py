"""``optimize()``: compiled model directory -> a new one with graph passes applied.

Pass order: contextual sparsity, linear quantization, embedding quantization, streaming.

Everything that can fail (settings, weights, calibration, the rewrite) happens
before OUT is written, and OUT is written atomically, so a failed run leaves
nothing behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx_ir as ir
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planforge import constants
from planforge.atomic import atomic_output_dir
from planforge.graph_passes.calibration import calibrate, calibration_samples
from planforge.graph_passes.contextual_sparsity import ContextualSparsityPass, SparsityOptions
from planforge.graph_passes.pipeline import PassReport, Pipeline
from planforge.graph_passes.quantize_embedding import (EmbeddingOptions, QuantizeEmbeddingPass, token_table_is_tied,
                                                      validate_embedding)
from planforge.graph_passes.quantize_linears import FLOAT_TYPES, QuantizeLinearsPass
from planforge.graph_passes.schemes import SCHEMES, CalibrationError, QuantizationError, QuantOptions, format_for
from planforge.graph_passes.streaming_attention import StreamingAttentionPass, StreamingConfigError, StreamingOptions
from planforge.runtime.manifest import Manifest

QUANT_PASSES = (QuantizeLinearsPass.name, QuantizeEmbeddingPass.name)


@dataclass(frozen=True)
class OptimizeOptions:
    quant: Optional[QuantOptions] = None  # None: no quantization of the linears ("--quant none")
    embedding: Optional[str] = None  # float | int8 | int4; None: the scheme's weight bits (float without --quant)
    calib: Optional[Path] = None
    calib_samples: int = 32
    calib_seq_len: Optional[int] = None  # default: min(256, max_seq_len)
    streaming: Optional[StreamingOptions] = None  # None: the full KV cache
    sparsity: Optional[SparsityOptions] = None  # None: dense (no contextual sparsity)
    force: bool = False
    show_progress: bool = False

    def embedding_storage(self, tied: bool) -> str:
        """The token table's storage: explicit, else (auto) the scheme's weight bits when the LM head is tied to
        the table (int4 for w4a4/w4a16, int8 for w8a8), float otherwise (an untied table would be dequantized
        whole at every step for a lookup of a few rows)."""
        if self.embedding is not None:
            validate_embedding(self.embedding)
            return self.embedding
        return f"int{SCHEMES[self.quant.scheme].base.w_bits}" if self.quant is not None and tied else "float"

    @property
    def quantizes(self) -> bool:
        return self.quant is not None or self.embedding_storage(tied=True) != "float"


def _check_source(model_dir: Path, manifest: Manifest, model: ir.Model) -> None:
    """Refuses quantized models and models whose float linear weights are not all present."""
    done = [p["name"] for p in manifest.passes if p.get("name") in QUANT_PASSES]
    if done:
        raise QuantizationError(f"{model_dir} is already quantized ({', '.join(done)}); "
                                "optimize the unquantized export instead.")
    if any(p.get("name") == ContextualSparsityPass.name for p in manifest.passes):
        raise QuantizationError(f"{model_dir} already has contextual sparsity; quantize and sparsify in one call on "
                                "the float export: `planforge optimize EXPORT --quant ... --sparsity-heads ... "
                                "--predictor ...` (sparsity runs first, its gathered decode slices stay float).")
    initializers = model.graph.initializers
    for lin in manifest.linears:
        value = initializers.get(lin["weight"])
        if value is None or value.const_value is None or value.const_value.dtype not in FLOAT_TYPES:
            raise QuantizationError(f"{model_dir}/model.onnx lacks the float weight {lin['weight']}; "
                                    "optimize the directory written by `planforge export`.")
        try:
            value.const_value.numpy()
        except (OSError, ValueError) as exc:
            raise QuantizationError(f"{model_dir}: the weights of {lin['module']} cannot be read ({exc}); "
                                    f"{constants.EXTERNAL_DATA_FILE} must sit beside model.onnx.") from None


def _calibration_stats(model_dir: Path, manifest: Manifest, options: OptimizeOptions, progress: Progress
                       ) -> tuple[dict, dict]:
    """(stats per linear weight, the calibration settings for the manifest)."""
    quant = options.quant
    if options.calib is None:
        raise CalibrationError(f"--quant {quant.scheme} with outliers or GPTQ needs calibration text: --calib FILE.")
    if not Path(options.calib).is_file():
        raise CalibrationError(f"--calib {options.calib}: no such file.")
    from planforge.runtime.tokenizer import Tokenizer

    seq_len = options.calib_seq_len or min(256, manifest.dims.max_seq_len)
    ids = Tokenizer(model_dir).encode(Path(options.calib).read_text())
    samples = calibration_samples(ids, seq_len, options.calib_samples)
    task = progress.add_task("calibration", total=len(samples))
    stats = calibrate(model_dir, manifest, samples, hessians=quant.weight_method == "gptq",
                      on_sample=lambda i: progress.update(task, completed=i))
    return stats, {"text": str(options.calib), "samples": len(samples), "seq_len": seq_len}


def _streaming_pass(model_dir: Path, manifest: Manifest, options: StreamingOptions) -> StreamingAttentionPass:
    if manifest.streaming:
        raise StreamingConfigError(f"{model_dir} already streams ({manifest.streaming}); optimize the export "
                                   "without --streaming instead.")
    if any(p.get("name") == ContextualSparsityPass.name for p in manifest.passes):
        raise StreamingConfigError(f"{model_dir} has contextual sparsity, whose decode branch attends over the full "
                                   "cache; --streaming and --sparsity-* cannot be combined yet.")
    options.validate(manifest.dims.max_seq_len)
    d = manifest.dims
    return StreamingAttentionPass(options, d.num_heads, d.num_kv_heads, d.head_dim, manifest.sliding_windows)


def _sparsity_pass(model_dir: Path, manifest: Manifest, options: OptimizeOptions) -> ContextualSparsityPass:
    """Runs first: its decode branch gathers float weight slices; a quantization pass after it rewrites the rest."""
    from planforge.errors import InvalidSparsityError
    from planforge.sparsity.predictor import Predictor

    options.sparsity.validate()
    done = [p.get("name") for p in manifest.passes]
    if done:
        raise InvalidSparsityError(f"{model_dir} was already optimized ({', '.join(done)}); contextual sparsity needs "
                                   "the float export: run `planforge optimize` on the directory written by "
                                   "`planforge export`, with --quant and --sparsity-* in the same call.")
    if options.streaming is not None:
        raise InvalidSparsityError("--streaming and --sparsity-* cannot be combined yet (the sparse decode branch "
                                   "attends over the full cache); use one of them.")
    predictor = Predictor.load(options.sparsity.predictor)
    return ContextualSparsityPass(options.sparsity, predictor, manifest.linears, manifest.dims)


def _linear_passes(model_dir: Path, manifest: Manifest, options: OptimizeOptions, progress: Progress) -> list:
    quant = options.quant
    if quant is None:
        return []
    quant.validate()
    for lin in manifest.linears:  # outlier counts against every layer's width, before any work
        format_for(quant, lin["role"], lin["in_features"])
    stats, calibration = (_calibration_stats(model_dir, manifest, options, progress) if quant.needs_calibration
                          else ({}, None))
    task = progress.add_task(f"quantize {quant.scheme} ({quant.weight_method})", total=len(manifest.linears))
    return [QuantizeLinearsPass(quant, manifest.linears, stats, on_linear=lambda m: progress.advance(task),
                                calibration=calibration)]


def _embedding_passes(options: OptimizeOptions, model: ir.Model, progress: Progress) -> list:
    storage = options.embedding_storage(tied=token_table_is_tied(model.graph))
    if storage == "float":
        return []
    clip_search = options.quant.clip_search if options.quant is not None else True
    task = progress.add_task(f"quantize embedding ({storage})", total=1)
    return [QuantizeEmbeddingPass(EmbeddingOptions(storage, clip_search), on_done=lambda: progress.advance(task))]


def _passes(model_dir: Path, manifest: Manifest, options: OptimizeOptions, model: ir.Model, progress: Progress
            ) -> list:
    sparse = [] if options.sparsity is None else [_sparsity_pass(model_dir, manifest, options)]
    streaming = [] if options.streaming is None else [_streaming_pass(model_dir, manifest, options.streaming)]
    return (sparse + _linear_passes(model_dir, manifest, options, progress) + _embedding_passes(options, model, progress)
            + streaming)


def optimize(model_dir: Path, out: Path, options: OptimizeOptions = OptimizeOptions()
             ) -> tuple[Manifest, list[PassReport]]:
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    model = ir.load(str(model_dir / constants.MODEL_FILE))
    if options.quantizes:
        _check_source(model_dir, manifest, model)
    progress = Progress(TextColumn("[bold]optimize[/] {task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not options.show_progress)
    with progress:
        reports = Pipeline(_passes(model_dir, manifest, options, model, progress))(model)
    if options.sparsity is not None:  # float weights a later pass replaced inside the If branches
        ir.passes.common.RemoveUnusedNodesPass()(model)
    with atomic_output_dir(out, options.force) as tmp:
        external = manifest.external_data
        ir.save(model, str(tmp / constants.MODEL_FILE),
                external_data=constants.EXTERNAL_DATA_FILE if external else None)
        for item in model_dir.iterdir():  # tokenizer and any other side files
            if item.is_file() and item.name not in (constants.MODEL_FILE, constants.EXTERNAL_DATA_FILE,
                                                    constants.MANIFEST_FILE):
                shutil.copy2(item, tmp / item.name)
        manifest.passes.extend(report.manifest_entry() for report in reports)
        if options.streaming is not None:
            manifest.set_streaming(options.streaming.manifest_entry())
        manifest.save(tmp)
    return manifest, reports
