"""``export()``: Hugging Face model directory -> OUT/{model.onnx, planforge.json, tokenizer}."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import onnx

from planforge import __version__, constants
from planforge.atomic import atomic_output_dir
from planforge.errors import UnsupportedConfigError
from planforge.exporter import loading
from planforge.exporter.decoder_graph import build_decoder_graph
from planforge.exporter.registry import adapter_for
from planforge.exporter.verify import check_against_source
from planforge.genai_config import write_genai_config
from planforge.tokenizer import pin_special_tokens
from planforge.exporter.progress import ExportProgress
from planforge.manifest import Manifest, io_contract

log = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16", "bf16")
# Above this many bytes of weights, initializers go to model.onnx.data (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "fp32"
    max_seq_len: Optional[int] = None
    adapter: Optional[Path] = None
    force: bool = False
    external_data: Literal["auto", "always", "never"] = "auto"
    show_progress: bool = False


def _token_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _special_tokens(hf_model, tokenizer) -> dict:
    gen = getattr(hf_model, "generation_config", None)
    cfg = hf_model.config
    pick = lambda name: getattr(gen, name, None) if getattr(gen, name, None) is not None else getattr(cfg, name, None)  # noqa: E731
    eos = _token_ids(pick("eos_token_id")) or _token_ids(getattr(tokenizer, "eos_token_id", None))
    pad = pick("pad_token_id")
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    bos = pick("bos_token_id")
    return dict(eos_token_ids=eos, pad_token_id=None if pad is None else int(pad),
                bos_token_id=None if bos is None else int(bos))


def _save_onnx(model: onnx.ModelProto, out: Path, mode: str) -> bool:
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    external = mode == "always" or (mode == "auto" and weight_bytes > EXTERNAL_DATA_THRESHOLD)
    path = out / constants.MODEL_FILE
    onnx.save_model(model, path, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=constants.EXTERNAL_DATA_FILE, size_threshold=1024)
    onnx.checker.check_model(str(path))
    return external


def _check_layer_shapes(weights, dims) -> None:
    """Refuses layers whose projections the one KV contract cannot hold (per-layer head counts or head dims)."""
    expected = {"q_proj": dims.num_heads * dims.head_dim, "k_proj": dims.num_kv_heads * dims.head_dim,
                "v_proj": dims.num_kv_heads * dims.head_dim}
    for i, layer in enumerate(weights.layers):
        for role, rows in expected.items():
            got = getattr(layer, role).weight.shape[0]
            if got != rows:
                raise UnsupportedConfigError(
                    f"layer {i} ({layer.attention_module}): {role} has {got} outputs where the model's "
                    f"{dims.num_heads if role == 'q_proj' else dims.num_kv_heads} heads of {dims.head_dim} need "
                    f"{rows}; heads or head dims that differ per layer do not fit one KV cache contract.")


def export(model: str, out: Path, options: ExportOptions = ExportOptions()) -> Manifest:
    """Exports ``model`` (a local directory or a cached hub id) to the compiled-model directory ``out``."""
    if options.dtype not in DTYPES:
        raise UnsupportedConfigError(f"--dtype {options.dtype!r} is not one of {', '.join(DTYPES)}.")
    model_dir = loading.resolve_model_dir(model)
    config = loading.load_config(model_dir)
    adapter = adapter_for(config)  # fail on unsupported architectures before loading weights
    dims, style = adapter.dims(options.max_seq_len), adapter.style()
    with atomic_output_dir(out, options.force) as tmp, ExportProgress(dims.num_layers, options.show_progress) as bar:
        bar.stage("loading weights")
        hf_model = loading.load_model(model_dir)
        if options.adapter is not None:
            bar.stage("merging LoRA adapter")
            hf_model = loading.merge_lora(hf_model, options.adapter)
        bar.step_done()
        bar.stage("building graph")
        weights = adapter.weights(hf_model, dims)
        _check_layer_shapes(weights, dims)
        graph = build_decoder_graph(dims, style, weights, options.dtype, __version__, on_layer=bar.layer_done)
        bar.stage("writing model.onnx")
        external = _save_onnx(graph.model, tmp, options.external_data)
        bar.step_done()
        bar.stage("checking against the source")
        check_against_source(tmp / constants.MODEL_FILE, hf_model, dims, options.dtype, adapter.family)
        tokenizer = loading.load_tokenizer(model_dir)
        if tokenizer is None:
            log.warning("%s has no fast tokenizer; the compiled model will accept token ids only.", model_dir)
        else:
            tokenizer.save_pretrained(tmp)
            pin_special_tokens(tmp)
        manifest = Manifest(
            planforge_version=__version__,
            architecture=type(hf_model).__name__,
            family=adapter.family,
            dtype=options.dtype,
            opset=constants.OPSET,
            dims=dims,
            sliding_windows=list(style.sliding_windows),
            io=io_contract(dims, options.dtype),
            linears=graph.linears,
            source={"model": str(model), "adapter": None if options.adapter is None else str(options.adapter)},
            has_tokenizer=tokenizer is not None,
            external_data=external,
            **_special_tokens(hf_model, tokenizer),
        )
        manifest.save(tmp)
        write_genai_config(tmp, manifest)
    return manifest
