"""planforge run OUT --prompt TEXT"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "run"


class Provider(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def command(
    model: Annotated[Path, typer.Argument(help="Compiled model directory (the output of `planforge export`).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt text; repeat for a batch (left-padded).")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate per prompt.")] = 64,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample from the distribution instead of taking the most likely token.")] = False,
    temperature: Annotated[float, typer.Option(help="Softmax temperature when sampling (> 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens only; 0 disables.")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample among the most likely tokens holding this probability mass; 1 disables.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling, for reproducible output.")] = None,
    stop_token_id: Annotated[Optional[list[int]], typer.Option(help="Extra token id that ends generation; repeatable. The model's EOS ids always stop it.")] = None,
    provider: Annotated[Provider, typer.Option(help="ONNX Runtime execution provider; cuda needs onnxruntime-gpu.")] = Provider.cpu,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads (default: all cores).")] = None,
    stream: Annotated[bool, typer.Option("--stream-text/--no-stream-text", help="Print text as it is generated (single prompt only).")] = True,
):
    """Generate text from a compiled model on ONNX Runtime and report tokens/s."""
    from planforge.runtime import GenerationConfig, Generator, SamplingConfig, Session, Tokenizer
    from planforge.runtime.tokenizer import TextStreamer

    session = Session(model, provider=provider.value, threads=threads)
    tokenizer = Tokenizer(model)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        stop_token_ids=tuple(stop_token_id or ()),
        sampling=SamplingConfig(do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
    )
    streaming = stream and len(prompt) == 1
    on_token = None
    if streaming:
        on_token = TextStreamer(tokenizer, lambda text: (sys.stdout.write(text), sys.stdout.flush()), prefix=prompt[0])
    result = Generator(session).generate([tokenizer.encode(p) for p in prompt], config, on_token=on_token)
    if streaming:
        sys.stdout.write("\n")
    else:
        for text, tokens in zip(prompt, result.tokens):
            typer.echo(f"{text}{tokenizer.decode(tokens)}")
            typer.echo("")
    typer.echo(
        f"[{result.new_token_count} new tokens | prefill {1000 * result.prefill_seconds:.1f} ms for "
        f"{sum(result.prompt_lengths)} prompt tokens | decode {result.decode_tokens_per_second:.1f} tokens/s | "
        f"finish: {', '.join(result.finish_reasons)}]", err=True)
