"""planforge export MODEL -o OUT"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "export"


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class ExternalData(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


def command(
    model: Annotated[str, typer.Argument(help="Hugging Face model directory, or a hub id already in the local cache (never downloaded).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to create: model.onnx, planforge.json and the tokenizer files.")],
    dtype: Annotated[DType, typer.Option(help="Weight and activation dtype of the graph. bf16 needs a GPU backend to run.")] = DType.fp32,
    max_seq_len: Annotated[Optional[int], typer.Option(help="Longest prompt plus generation the model will serve; sizes the rotary tables. Default: the model's max_position_embeddings.")] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="PEFT LoRA adapter directory to merge into the weights before export.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists (it is replaced only when the export succeeds). Only a planforge output (a directory with planforge.json) or an empty directory is replaced; never a file or the working directory.")] = False,
    external_data: Annotated[ExternalData, typer.Option(help="Store weights in model.onnx.data beside model.onnx: auto = above 1 GiB.")] = ExternalData.auto,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Export a Hugging Face causal LM to ONNX (opset 23) with a KV cache, ready for ONNX Runtime."""
    from planforge.exporter.api import ExportOptions, export

    manifest = export(model, output, ExportOptions(dtype=dtype.value, max_seq_len=max_seq_len, adapter=adapter,
                                                   force=force, external_data=external_data.value,
                                                   show_progress=not quiet))
    d = manifest.dims
    typer.echo(f"exported {manifest.architecture} ({d.num_layers} layers, {d.num_heads} heads / {d.num_kv_heads} kv, "
               f"{manifest.dtype}, max_seq_len {d.max_seq_len}) to {output}")
