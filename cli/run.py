"""planforge run OUT --prompt TEXT  |  planforge run OUT --stream --input LONG.txt"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from planforge.cli.options import BackendOption, Device, DeviceOption

NAME = "run"


def command(
    model: Annotated[Path, typer.Argument(help="Compiled model directory (the output of `planforge export`).")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Prompt text; repeat for a batch (left-padded).")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="Read the prompt from this text file ('-' for stdin) instead of --prompt.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Run a model optimized with --streaming over an input of any length (e.g. a long --input) and keep generating, with a KV cache of constant size; shows the input's progress and the cache size.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate per prompt.")] = 64,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample from the distribution instead of taking the most likely token.")] = False,
    temperature: Annotated[float, typer.Option(help="Softmax temperature when sampling (> 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens only; 0 disables.")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample among the most likely tokens holding this probability mass; 1 disables.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling, for reproducible output.")] = None,
    stop_token_id: Annotated[Optional[list[int]], typer.Option(help="Extra token id that ends generation; repeatable. The model's EOS ids always stop it.")] = None,
    backend: BackendOption = None,
    device: DeviceOption = Device.cpu,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads: onnxruntime's per model; torch's process-wide (torch.set_num_threads). Default: one per physical core.")] = None,
    stream_text: Annotated[bool, typer.Option("--stream-text/--no-stream-text", help="Print text as it is generated (single prompt only).")] = True,
):
    """Generate text from a compiled model (on ONNX Runtime by default) and report tokens/s."""
    from planforge.errors import CompiledModelError
    from planforge.runtime import GenerationConfig, Generator, SamplingConfig, Tokenizer, open_backend
    from planforge.runtime.tokenizer import TextStreamer

    prompt = _prompts(prompt, input_file)
    session = open_backend(model, backend, device.value, **({"threads": threads} if threads else {}))
    if stream and session.manifest.streaming is None:
        raise CompiledModelError(
            f"{model} has a full KV cache, so --stream cannot run past its max_seq_len "
            f"({session.manifest.dims.max_seq_len}). Create a streaming model first: "
            f"`planforge optimize {model} -o {model}-streaming --streaming`.")
    tokenizer = Tokenizer(model)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        stop_token_ids=tuple(stop_token_id or ()),
        sampling=SamplingConfig(do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
    )
    streaming = stream_text and len(prompt) == 1
    on_token = None
    if streaming:
        prefix = prompt[0] if not stream else ""  # a long input is not echoed
        on_token = TextStreamer(tokenizer, lambda text: (sys.stdout.write(text), sys.stdout.flush()), prefix=prefix)
    generator = Generator(session)
    prompt_ids = [tokenizer.encode(p) for p in prompt]
    with _input_progress(stream, len(prompt_ids[0])) as on_step:
        result = generator.generate(prompt_ids, config, on_token=on_token, on_prefill_step=on_step)
    if streaming:
        sys.stdout.write("\n")
    else:
        for text, tokens in zip(prompt, result.tokens):
            typer.echo(f"{text}{tokenizer.decode(tokens)}")
            typer.echo("")
    typer.echo(
        f"[{result.new_token_count} new tokens | prefill {1000 * result.prefill_seconds:.1f} ms for "
        f"{sum(result.prompt_lengths)} prompt tokens | decode {result.decode_tokens_per_second:.1f} tokens/s | "
        f"finish: {', '.join(result.finish_reasons)} | loop: {result.loop}]", err=True)
    from planforge.runtime import native

    if result.loop == "python" and session.device == "cpu" and native.unavailable_reason():
        typer.echo(f"[the Python generation loop ran: {native.unavailable_reason()}]", err=True)
    if session.manifest.streaming:
        slots = session.manifest.streaming["cache_slots"]
        typer.echo(f"[streaming KV cache: {slots} positions per layer "
                   f"({session.manifest.streaming['sink_tokens']} sinks + {session.manifest.streaming['window']} "
                   f"window), constant for any length]", err=True)


def _prompts(prompt: Optional[list[str]], input_file: Optional[Path]) -> list[str]:
    from planforge.errors import InvalidPromptError

    if (prompt is None) == (input_file is None):
        raise InvalidPromptError("give the prompt with --prompt TEXT or --input FILE (one of them).")
    if input_file is None:
        return prompt
    from planforge.tokenizer import decode_utf8, read_text

    if str(input_file) == "-":
        return [decode_utf8(sys.stdin.buffer.read(), "--input - (stdin)")]
    return [read_text(input_file, "--input")]


@contextmanager
def _input_progress(show: bool, total: int):
    """A progress bar (stderr) over the prompt tokens a streaming model takes one step at a time; None without
    one, so the generation loop needs no step callback (and may run in C++)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]input"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    with progress:
        task = progress.add_task("input", total=total)
        yield lambda start, logits: progress.update(task, completed=start + logits.shape[1])
