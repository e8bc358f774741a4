"""Decode throughput: planforge on ONNX Runtime vs transformers (torch), same machine, same run.

    python samples/bench_runtime.py samples/reference_model --new-tokens 64 --repeats 5

Exports MODEL to a temporary directory, then times greedy generation of
--new-tokens tokens for batch sizes 1 and 4 with both, and prints medians and
the ratio. Generated tokens are checked to be identical for batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def time_planforge(generator, prompts, new_tokens, repeats):
    from planforge.runtime import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    generator.generate(prompts, config)  # warm-up
    times, tokens = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = generator.generate(prompts, config).tokens
        times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def time_transformers(model, prompts, new_tokens, repeats):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    with torch.no_grad():
        model.generate(ids, **kwargs)
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            times.append(time.perf_counter() - start)
    return statistics.median(times), out[:, width:].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Hugging Face model directory")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads for both torch and ONNX Runtime")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from planforge.exporter.api import ExportOptions, export
    from planforge.runtime import Generator, open_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export(args.model, Path(tmp) / "compiled", ExportOptions())
        generator = Generator(open_backend(Path(tmp) / "compiled", threads=args.threads))
        for batch in (1, 4):
            prompts = [rng.integers(1, vocab, args.prompt_tokens - 3 * i).tolist() for i in range(batch)]
            pf_s, pf_tokens = time_planforge(generator, prompts, args.new_tokens, args.repeats)
            hf_s, hf_tokens = time_transformers(model, prompts, args.new_tokens, args.repeats)
            same = "yes" if pf_tokens == hf_tokens else "no"
            rows.append((batch, batch * args.new_tokens / hf_s, batch * args.new_tokens / pf_s, hf_s / pf_s, same))
    print(f"\ngreedy generation, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, "
          f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| batch | transformers tok/s | planforge ORT tok/s | speed-up | same tokens |")
    print("|---|---|---|---|---|")
    for batch, hf, pf, ratio, same in rows:
        print(f"| {batch} | {hf:.1f} | {pf:.1f} | {ratio:.2f}x | {same} |")


if __name__ == "__main__":
    main()
