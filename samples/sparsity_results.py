"""The contextual-sparsity results table (docs/sparsity.md) on the shipped reference model.

    python samples/sparsity_results.py
    python samples/sparsity_results.py --device cuda   # the full run: 234 s on one H100

For heads only, MLP neurons only, and both, at 25%, 50% and 70% sparsity, evaluates the torch
masked model (planforge/sparsity/masking.py, the reference the graph pass is tested against) with
three ways of choosing, per token, what to keep:

- plainact + single: the shipped ShadowLLM predictor (samples/reference_model/sparsity_predictor.safetensors,
  from samples/sparsity/train_reference_predictor.py), reading the layer-0 attention output;
- l2 + per-layer: DejaVu, activation-magnitude labels, one predictor per layer reading that
  layer's input, trained here on the same calibration text and with the same sizes/epochs;
- oracle: the true plainact importance computed on the evaluated sequence itself (one backward
  of its own next-token loss, never the answer label), top-k of it.

Layer 0's heads stay dense for all three (they produce the single predictor's input).
Perplexity follows evaluation/perplexity.py (disjoint 256-token windows) on the first
--ppl-tokens tokens of heldout.txt, the range the demo scores; accuracy follows
evaluation/accuracy.py on accuracy.jsonl (each choice scored as context + choice).
Calibration for the predictors is the last quarter of heldout.txt, which is never scored.

``--device cuda`` runs the model, the importance backward passes and the predictors' forward on
the GPU, with the same fp32 math: TF32 is disabled and attention uses PyTorch's plain-math SDPA
backend (the fused fp32 kernel computes in 3xTF32), so only float rounding differs from the CPU.
The l2 predictor is still trained on the CPU (sparsity/training.py), from labels computed on the
GPU; training amplifies their rounding, so its cells can move more than the others (docs/sparsity.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from planforge.evaluation.accuracy import accuracy, load_items
from planforge.evaluation.perplexity import perplexity, windows
from planforge.evaluation.scorers import gather_logprobs, right_pad
from planforge.exporter.loading import load_model, load_tokenizer
from planforge.tokenizer import Tokenizer
from planforge.sparsity.importance import window_importance
from planforge.sparsity.masking import (layer0_attention_output, masked_logits, per_layer_predicted_logits,
                                        top_k_mask)
from planforge.sparsity.predictor import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent / "sparsity"))
from train_reference_predictor import REFERENCE_MODEL, calibration_text, reference_predictor  # noqa: E402

TARGETS = ("heads", "mlp", "both")
SPARSITIES = (0.25, 0.5, 0.7)
CONFIGS = [(target, f) for target in TARGETS for f in SPARSITIES]


def split(target: str, f: float) -> tuple[float, float]:
    """(head sparsity, neuron sparsity) for a table cell."""
    return (f if target in ("heads", "both") else 0.0), (f if target in ("mlp", "both") else 0.0)


class ScoredMethod:
    """Scores every head/neuron of every token once per sequence; each config is a top-k of them."""

    def __init__(self, name, scores):
        self.name, self.scores = name, scores  # scores(model, ids, lengths) -> (B, S, L, H), (B, S, L, F)

    def prepare(self, model, ids, lengths):
        heads, neurons = self.scores(model, ids, lengths)
        return heads.permute(2, 0, 1, 3), neurons.permute(2, 0, 1, 3)  # (L, B, S, H), (L, B, S, F)

    def logits(self, model, ids, state, head_f, mlp_f):
        head_mask = top_k_mask(state[0], head_f) if head_f > 0 else None
        if head_mask is not None:
            head_mask[0] = True  # layer 0 heads are dense
        return masked_logits(model, ids, head_mask, top_k_mask(state[1], mlp_f) if mlp_f > 0 else None)


class PerLayerMethod:
    def __init__(self, name, predictor):
        self.name, self.predictor = name, predictor

    def prepare(self, model, ids, lengths):
        return None

    def logits(self, model, ids, state, head_f, mlp_f):
        return per_layer_predicted_logits(model, self.predictor, ids, head_f, mlp_f)


def single_scores(predictor):
    def scores(model, ids, lengths):
        B, S = ids.shape
        heads, neurons = predictor.scores_torch(layer0_attention_output(model, ids).reshape(B * S, -1))
        return heads.reshape(B, S, *heads.shape[1:]), neurons.reshape(B, S, *neurons.shape[1:])
    return scores


def oracle_scores(model, ids, lengths):
    B, S = ids.shape
    out = window_importance(model, ids, "plainact", lengths=lengths, keep_last=True)
    return out["heads"].reshape(B, S, *out["heads"].shape[1:]), out["neurons"].reshape(B, S, *out["neurons"].shape[1:])


def all_logits(model, methods, ids, lengths):
    """{"dense" | (method, target, f): logits (B, S, V) as numpy} for one batch of sequences."""
    out = {"dense": masked_logits(model, ids, None, None).cpu().numpy()}
    for method in methods:
        state = method.prepare(model, ids, lengths)
        for target, f in CONFIGS:
            out[(method.name, target, f)] = method.logits(model, ids, state, *split(target, f)).cpu().numpy()
    return out


def choice_scores(logits, seqs, conts) -> list[float]:
    """logits (B, S, V) of right-padded context + choice rows -> each choice's summed log-probability."""
    return [float(gather_logprobs(logits[r, :len(s)], s)[-len(c):].sum()) for r, (s, c) in enumerate(zip(seqs, conts))]


def evaluate_all(model, methods, text_ids, items, encode, context, progress):
    """Per-config perplexity and accuracy, with every sequence's methods prepared once.

    The 28 log-softmaxes of a sequence (numpy, float64) run on a thread pool: on a GPU they would
    otherwise take about as long as the forwards. Each is the same call as in a serial loop.
    """
    spans = windows(len(text_ids), context, context)
    window_lp, item_scores = {}, {}
    with ThreadPoolExecutor() as pool:
        for begin, end, _ in spans:
            ids = text_ids[begin:end]
            logits = all_logits(model, methods, torch.from_numpy(ids)[None], None)
            lps = pool.map(gather_logprobs, [x[0] for x in logits.values()], repeat(ids))
            window_lp.update({(key, ids.tobytes()): lp for key, lp in zip(logits, lps)})
            progress()
        for n, item in enumerate(items):
            ctx = np.array(encode(item["context"], True), dtype=np.int64)
            conts = [np.array(encode(c, False), dtype=np.int64) for c in item["choices"]]
            keep = context - max(len(c) for c in conts)
            seqs = [np.concatenate([ctx[-keep:], c]) for c in conts]
            lengths = [len(s) for s in seqs]
            logits = all_logits(model, methods, torch.from_numpy(right_pad(seqs)), lengths)
            scores = pool.map(choice_scores, logits.values(), repeat(seqs), repeat(conts))
            item_key = (ctx.tobytes(), tuple(c.tobytes() for c in conts))
            item_scores.update({(key, *item_key): score for key, score in zip(logits, scores)})
            progress()
    results = {}
    for key in ["dense"] + [(m.name, t, f) for m in methods for t, f in CONFIGS]:
        ppl = perplexity(text_ids, lambda w: window_lp[(key, w.tobytes())], context).perplexity
        acc = accuracy(items, encode, lambda c, cs: item_scores[(key, c.tobytes(), tuple(x.tobytes() for x in cs))])
        results[key] = (ppl, acc.accuracy)
    return results, len(spans)


def markdown(results, methods, ppl_tokens, items) -> str:
    names = [m.name for m in methods]
    head = "| target | sparsity | " + " | ".join(f"{n} ppl | {n} acc" for n in names) + " |"
    lines = [f"Perplexity on the first {ppl_tokens} held-out tokens, accuracy on {items} items.", "",
             head, "|---|---|" + "---:|---:|" * len(names)]
    dense_ppl, dense_acc = results["dense"]
    lines.append("| dense | 0% | " + " | ".join(f"{dense_ppl:.2f} | {100 * dense_acc:.1f}%" for _ in names) + " |")
    for target, f in CONFIGS:
        cells = [f"{results[(n, target, f)][0]:.2f} | {100 * results[(n, target, f)][1]:.1f}%" for n in names]
        lines.append(f"| {target} | {int(round(100 * f))}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_fp32_on_cuda() -> None:
    """CUDA settings that keep the math the CPU's fp32, so the results differ from it by rounding only."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # fp32 SDPA would otherwise take the memory-efficient kernel, which multiplies in 3xTF32
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REFERENCE_MODEL, help="model dir with heldout.txt, accuracy.jsonl")
    parser.add_argument("--predictor", type=Path, default=None,
                        help="plainact single predictor (default: MODEL/sparsity_predictor.safetensors)")
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="held-out tokens scored for perplexity")
    parser.add_argument("--items", type=int, default=300, help="accuracy items (the first N)")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows for the l2 per-layer predictor")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for the l2 per-layer predictor")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the model, the importance and the predictors' forward: cpu (default) "
                             "or cuda / cuda:N (fp32 with TF32 off; predictor training stays on the CPU)")
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device!r} is not a torch device ({exc})")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was requested but CUDA is not available "
                     f"(torch {torch.__version__} sees no GPU); run on a GPU machine or use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    from rich.progress import Progress

    start = time.perf_counter()
    if device.type == "cuda":
        plain_fp32_on_cuda()
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    print(f"device: {where}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    model = load_model(args.model).to(device)
    hf_tokenizer, tokenizer = load_tokenizer(args.model), Tokenizer(args.model)
    single = Predictor.load(args.predictor or args.model / "sparsity_predictor.safetensors")
    print(f"training the l2 + per-layer predictor ({args.samples} windows, {args.epochs} epochs) ...", flush=True)
    trained = reference_predictor(model, hf_tokenizer, calibration_text(args.model), "l2", "per_layer",
                                  args.samples, args.seq_len, args.epochs)
    print("l2 per-layer held-out Spearman vs l2 labels: heads %.3f, neurons %.3f (mean over layers)"
          % (np.mean(trained.spearman_heads), np.mean(trained.spearman_neurons)))
    methods = [ScoredMethod("plainact + single", single_scores(single)),
               PerLayerMethod("l2 + per-layer", trained.predictor), ScoredMethod("oracle", oracle_scores)]
    text_ids = np.array(tokenizer.encode((args.model / "heldout.txt").read_text()), dtype=np.int64)[: args.ppl_tokens]
    items = load_items(args.model / "accuracy.jsonl")[: args.items]
    context = model.config.max_position_embeddings
    with Progress() as progress:
        task = progress.add_task("evaluating", total=len(windows(len(text_ids), context, context)) + len(items))
        results, _ = evaluate_all(model, methods, text_ids, items, tokenizer.encode, context,
                                  lambda: progress.advance(task))
    print(markdown(results, methods, len(text_ids), len(items)))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
