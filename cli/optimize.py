"""planforge optimize MODEL -o OUT --quant w4a4"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "optimize"


class Quant(str, Enum):
    w4a4 = "w4a4"
    w8a8 = "w8a8"
    w4a16 = "w4a16"
    none = "none"


class Embedding(str, Enum):
    auto = "auto"
    float = "float"
    int8 = "int8"
    int4 = "int4"


class WeightMethod(str, Enum):
    rtn = "rtn"
    gptq = "gptq"


class Target(str, Enum):
    onnxruntime = "onnxruntime"
    portable = "portable"


def command(
    model: Annotated[Path, typer.Argument(help="Compiled model directory (the output of `planforge export`, fp32 or fp16).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to create with the optimized model.onnx, planforge.json and the tokenizer.")],
    quant: Annotated[Optional[Quant], typer.Option(help="w4a4: QUIK 4-bit weights and activations with float outlier columns; w8a8: INT8 per-channel weights, per-token activations; w4a16: INT4 weights in blocks of 128; none: no quantization of the linears (the token table follows --embedding). Default: w4a4, or none when --streaming or --sparsity-* is given.")] = None,
    outliers: Annotated[Optional[str], typer.Option(help="Input columns per linear kept in float, by calibration max|x|: a count (16) or a fraction of the layer width (0.03). Default: 0.03 for w4a4, 0 otherwise.")] = None,
    int8_layers: Annotated[str, typer.Option(help="w4a4 only: comma-separated roles kept at W8A8 (q_proj ... down_proj), or none.")] = "down_proj",
    int8_outliers: Annotated[str, typer.Option(help="Outlier columns of the INT8 layers: a count or a fraction of their width.")] = "0",
    weight_method: Annotated[WeightMethod, typer.Option(help="rtn: round to nearest; gptq: GPTQ with act-order, outliers last (needs --calib).")] = WeightMethod.rtn,
    embedding: Annotated[Embedding, typer.Option(help="Token-embedding table (and a tied LM head, which reads the same table): int4 (symmetric, one scale per 64 hidden units, clip search), int8 (one scale per row) or float. auto: when the LM head is tied to the table, the --quant scheme's weight bits (int4 for w4a4 and w4a16, int8 for w8a8); otherwise, and with --quant none, float (an untied table would be dequantized whole at every step). An explicit int4/int8 also quantizes untied tables and works with --quant none; the clip search follows --clip-search.")] = Embedding.auto,
    clip_search: Annotated[bool, typer.Option(help="Search the weight clipping ratio per channel (1.00 to 0.81) for the least error.")] = True,
    group: Annotated[Optional[int], typer.Option(help="w4a16 only: input rows sharing one weight scale, a power of two from 16. Default: 128. 32 (ORT-GenAI's int4 default) is more accurate and faster on ONNX Runtime CPU, at 1 more bit per weight for the scales.")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration text file (needed for outliers and GPTQ).")] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration windows to run, each --calib-seq-len tokens.")] = 32,
    calib_seq_len: Annotated[Optional[int], typer.Option(help="Tokens per calibration window. Default: min(256, max_seq_len).")] = None,
    sparsity_heads: Annotated[float, typer.Option(help="Contextual sparsity: fraction of attention heads skipped per token in layers >= 1, in [0, 1) (needs --predictor).")] = 0.0,
    sparsity_mlp: Annotated[float, typer.Option(help="Contextual sparsity: fraction of MLP neurons skipped per token in every layer, in [0, 1) (needs --predictor).")] = 0.0,
    predictor: Annotated[Optional[Path], typer.Option(help="Sparsity predictor file (`planforge sparsity train-predictor`, single kind) that picks the heads and neurons per token.")] = None,
    streaming: Annotated[bool, typer.Option("--streaming", help="StreamingLLM: a fixed KV cache of --sink-tokens + --window positions per layer (the first tokens plus a rolling window), positions re-indexed inside the cache, so text of any length runs in constant memory. Rotary families only.")] = False,
    sink_tokens: Annotated[Optional[int], typer.Option(help="With --streaming: initial tokens always kept in the cache (attention sinks); fewer than --window. Default: 4.")] = None,
    window: Annotated[Optional[int], typer.Option(help="With --streaming: most recent tokens kept in the cache (>= 1). Default: max_seq_len - --sink-tokens, the largest the trained positions allow.")] = None,
    target: Annotated[Target, typer.Option(help="What model.onnx is written for. onnxruntime: the quantized linears and the token table lowered onto ONNX Runtime's own integer and 4-bit kernels (MatMulNBits, MatMulInteger, GatherBlockQuantized), and attention onto GroupQueryAttention over shared cache buffers (not for --streaming or sparse attention); the fast form on the embedded default. portable: standard ONNX ops and QDQ only, the semantic reference that TensorRT and the other backends read.")] = Target.onnxruntime,
    accuracy_level: Annotated[int, typer.Option(help="--target onnxruntime: how MatMulNBits computes with the 4-bit weights of weight-only linears and of a tied LM head. 4: int8 activations per weight block (fast; what ONNX Runtime GenAI ships); 1: float32 (the portable graph's numbers exactly, slower).")] = 4,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists (only when the run succeeds, and only a planforge output or an empty directory; never the working directory).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Apply graph passes to a compiled model: W4A4 (QUIK, with float outliers), W8A8 or W4A16 quantization of the linears and of the token-embedding table (--embedding); contextual sparsity (--sparsity-heads/--sparsity-mlp with --predictor); a streaming KV cache (--streaming)."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.contextual_sparsity import SparsityOptions
    from planforge.graph_passes.schemes import QuantOptions
    from planforge.graph_passes.streaming_attention import StreamingConfigError, StreamingOptions
    from planforge.manifest import model_file_bytes

    if (window is not None or sink_tokens is not None) and not streaming:
        raise StreamingConfigError("--window and --sink-tokens configure --streaming; add --streaming.")
    sink_tokens = 4 if sink_tokens is None else sink_tokens
    if quant is None:
        quant = Quant.none if streaming or predictor is not None or sparsity_heads or sparsity_mlp else Quant.w4a4
    roles = tuple(r.strip() for r in int8_layers.split(",") if r.strip() and r.strip() != "none")
    quant_options = None if quant is Quant.none else QuantOptions(
        scheme=quant.value, outliers=outliers, int8_layers=roles, int8_outliers=int8_outliers,
        weight_method=weight_method.value, clip_search=clip_search, group=group)
    streaming_options = None
    if streaming:
        from planforge.manifest import Manifest

        max_seq_len = Manifest.load(model).dims.max_seq_len
        if window is None and sink_tokens >= max_seq_len // 2:
            raise StreamingConfigError(
                f"--sink-tokens {sink_tokens} leaves no room for the default window: the cache holds at most "
                f"max_seq_len = {max_seq_len} positions and the window must be larger than the sinks. Use fewer "
                "sink tokens (StreamingLLM uses 4), or give --window.")
        streaming_options = StreamingOptions(sink_tokens, max_seq_len - sink_tokens if window is None else window)
    sparsity = (SparsityOptions(heads=sparsity_heads, mlp=sparsity_mlp, predictor=predictor)
                if predictor is not None or sparsity_heads or sparsity_mlp else None)
    options = OptimizeOptions(quant=quant_options, calib=calib, calib_samples=calib_samples, calib_seq_len=calib_seq_len,
                              embedding=None if embedding is Embedding.auto else embedding.value,
                              sparsity=sparsity, streaming=streaming_options, target=target.value,
                              accuracy_level=accuracy_level, force=force,
                              show_progress=not quiet)
    _, reports = optimize(model, output, options)
    for report in reports:
        typer.echo(f"{report.name}: {report.matches} rewritten")
    size = model_file_bytes(output)
    typer.echo(f"wrote {output} ({size / 1e6:.1f} MB model)")
