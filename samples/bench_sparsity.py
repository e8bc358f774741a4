"""Decode speed and per-token MACs: dense vs contextual sparsity, on ONNX Runtime CPU, same run.

    python samples/bench_sparsity.py samples/reference_model --heads 0.5 --mlp 0.5 --new-tokens 64 --repeats 5

Exports MODEL (fp32) to a temporary directory, applies `planforge optimize --quant none --sparsity-heads
--sparsity-mlp --predictor` to it, then times greedy decoding of --new-tokens tokens after a
--prompt-tokens prompt (batch 1; the prefill is not timed) with both, alternating dense and sparse
runs, and prints the median tokens/s and their ratio, the per-token MACs of the decode step
(graph_passes/flops.py) at the mean decoded context, the model sizes, the machine, and the largest
logit difference of the sparse graph from the torch masked model (planforge.sparsity.masking).
With --w4a4 it adds W4A4 (RTN, no outliers, token table left float) and sparsity + W4A4 in one optimize call; --extra 0.7 0.9
adds sparse variants at those fractions (heads and neurons alike).
The predictor defaults to MODEL/sparsity_predictor.safetensors; without one, --random-predictor
writes a random but valid one (timing and MACs only: its selections are meaningless).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def decode_once(session, prompt: np.ndarray, new_tokens: int) -> tuple[float, list[int]]:
    """Seconds for ``new_tokens`` greedy decode steps after an untimed prefill; the tokens."""
    n = prompt.shape[1]
    logits, cache = session.forward(prompt, np.ones((1, n), np.int64), np.arange(n)[None], session.empty_cache(1))
    token, tokens = int(logits[0, -1].argmax()), []
    start = time.perf_counter()
    for step in range(new_tokens):
        tokens.append(token)
        position = n + step
        logits, cache = session.forward(np.array([[token]]), np.ones((1, position + 1), np.int64),
                                        np.array([[position]]), cache)
        token = int(logits[0, -1].argmax())
    return time.perf_counter() - start, tokens


def check_against_torch(model: str, sparse_dir: Path, predictor: Path, heads: float, mlp: float,
                        prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """Max |logit difference| of the sparse graph (prefill, then decode step by step) from the torch masked model
    with the same predictor: (prefill, decode)."""
    import torch
    from transformers import AutoModelForCausalLM

    from planforge.runtime import open_backend
    from planforge.sparsity.masking import masked_logits, predicted_masks
    from planforge.sparsity.predictor import Predictor

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    session = open_backend(sparse_dir)
    _, tokens = decode_once(session, prompt, new_tokens)
    ids = np.concatenate([prompt, np.array([tokens])], axis=1)  # the greedy continuation, teacher-forced in torch
    masks = predicted_masks(hf, Predictor.load(predictor), torch.from_numpy(ids), heads, mlp)
    reference = masked_logits(hf, torch.from_numpy(ids), *masks).numpy()
    n, pos = prompt.shape[1], np.arange(ids.shape[1])[None]
    logits, cache = session.forward(prompt, np.ones((1, n), np.int64), pos[:, :n], session.empty_cache(1))
    prefill = float(np.abs(logits - reference[:, :n]).max())
    decode = 0.0
    for t in range(n, ids.shape[1]):
        logits, cache = session.forward(ids[:, t:t + 1], np.ones((1, t + 1), np.int64), pos[:, t:t + 1], cache)
        decode = max(decode, float(np.abs(logits[:, 0] - reference[:, t]).max()))
    return prefill, decode


def random_predictor(model_dir: Path, path: Path, hidden: int = 128) -> Path:
    from planforge.manifest import Manifest
    from planforge.sparsity.predictor import Predictor, PredictorHeader, expected_shapes

    d = Manifest.load(model_dir).dims
    header = PredictorHeader(kind="single", criterion="random", num_layers=d.num_layers, num_heads=d.num_heads,
                             num_kv_heads=d.num_kv_heads, hidden_size=d.hidden_size,
                             intermediate_size=d.intermediate_size, head_hidden=hidden, neuron_hidden=hidden)
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(header).items()}
    tensors["input_std"] = np.ones_like(tensors["input_std"])
    Predictor(header, tensors).save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Hugging Face model directory (e.g. samples/reference_model)")
    parser.add_argument("--predictor", type=Path, default=None, help="default: MODEL/sparsity_predictor.safetensors")
    parser.add_argument("--random-predictor", action="store_true", help="use a random valid predictor (timing only)")
    parser.add_argument("--heads", type=float, default=0.5)
    parser.add_argument("--mlp", type=float, default=0.5)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)")
    parser.add_argument("--w4a4", action="store_true", help="also W4A4 dense vs sparsity + W4A4")
    parser.add_argument("--extra", type=float, nargs="*", default=[],
                        help="more sparse variants, each with this fraction for both heads and neurons")
    args = parser.parse_args()

    import onnxruntime as ort

    from planforge.exporter.api import ExportOptions, export
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.contextual_sparsity import SparsityOptions
    from planforge.graph_passes.flops import decode_macs, format_table
    from planforge.graph_passes.schemes import QuantOptions
    from planforge.runtime import open_backend
    from planforge.manifest import model_file_bytes

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export(args.model, tmp / "dense", ExportOptions(dtype="fp32"))
        predictor = args.predictor or Path(args.model) / "sparsity_predictor.safetensors"
        note = f"predictor {predictor}"
        if args.random_predictor or not predictor.is_file():
            predictor = random_predictor(tmp / "dense", tmp / "random_predictor.safetensors")
            note = "RANDOM predictor (no trained one given): timing and MACs only"
        sparsity = SparsityOptions(args.heads, args.mlp, predictor)
        label = f"sparse {args.heads:g}/{args.mlp:g}"
        variants = {"dense fp32": tmp / "dense"}
        optimize(tmp / "dense", tmp / "sparse", OptimizeOptions(sparsity=sparsity))
        variants[label] = tmp / "sparse"
        for i, fraction in enumerate(args.extra):
            optimize(tmp / "dense", tmp / f"extra{i}", OptimizeOptions(
                sparsity=SparsityOptions(fraction, fraction, predictor)))
            variants[f"sparse {fraction:g}/{fraction:g}"] = tmp / f"extra{i}"
        if args.w4a4:
            # the token table stays float, as in the published table: the comparison is about the linears
            quant = QuantOptions(scheme="w4a4", outliers="0")
            optimize(tmp / "dense", tmp / "w4a4", OptimizeOptions(quant=quant, embedding="float"))
            optimize(tmp / "dense", tmp / "sparse_w4a4", OptimizeOptions(quant=quant, embedding="float",
                                                                         sparsity=sparsity))
            variants["W4A4"], variants[f"{label} + W4A4"] = tmp / "w4a4", tmp / "sparse_w4a4"
        sessions = {name: open_backend(path, threads=args.threads) for name, path in variants.items()}
        vocab = sessions["dense fp32"].manifest.dims.vocab_size
        prompt = np.random.default_rng(0).integers(1, vocab, (1, args.prompt_tokens))
        times = {name: [] for name in sessions}
        tokens = {}
        for name, session in sessions.items():  # warm-up
            decode_once(session, prompt, 4)
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for name, session in sessions.items():
                seconds, tokens[name] = decode_once(session, prompt, args.new_tokens)
                times[name].append(seconds)
        context = args.prompt_tokens + args.new_tokens // 2
        macs = [(name, decode_macs(path, context)) for name, path in variants.items()]
        sizes = {name: model_file_bytes(path) / 1e6 for name, path in variants.items()}
        check = check_against_torch(args.model, tmp / "sparse", predictor, args.heads, args.mlp, prompt, 16)

    base = statistics.median(times["dense fp32"])
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
          f"{platform.system()} {platform.release()}; onnxruntime {ort.__version__} CPU, "
          f"threads {args.threads or 'default'}; {note}")
    print(f"batch 1, {args.prompt_tokens}-token random prompt, {args.new_tokens} greedy decode steps timed "
          f"(prefill excluded), median of {args.repeats} interleaved repeats\n")
    print("| variant | model MB | decode tokens/s | vs dense fp32 | same tokens as dense |")
    print("|---|---:|---:|---:|---|")
    for name in variants:
        median = statistics.median(times[name])
        same = "yes" if tokens[name] == tokens["dense fp32"] else "no"
        print(f"| {name} | {sizes[name]:.1f} | {args.new_tokens / median:.1f} | "
              f"{base / median:.2f}x | {same} |")
    print()
    print(format_table(macs))
    print(f"\n{label} vs the torch masked model (same predictor, {args.prompt_tokens}-token prefill, then 16 decode "
          f"steps through the KV cache): max |logit diff| prefill {check[0]:.2e}, decode {check[1]:.2e}")


if __name__ == "__main__":
    main()
