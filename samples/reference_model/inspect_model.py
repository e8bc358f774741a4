"""Inspect the shipped reference model on CPU (well under 2 minutes by default).

Prints, for the trained model and for a random-init model of the same config
(the seeded step-0 weights of ``train.py``):
  * held-out perplexity, strided sliding window (window = context 256,
    stride = 128; each token is scored once, with up to 255 tokens of context);
  * multiple-choice accuracy on ``accuracy.jsonl`` (summed log-probability);
then 3 seeded samples (temperature 0.8, top-k 40) and, per layer, the
max/median ratio of the per-input-column max |activation| at the inputs of
q_proj (post input_layernorm), o_proj, gate_proj (post post_attention_layernorm)
and down_proj: the outlier columns that QUIK keeps in fp16.

    python samples/reference_model/inspect_model.py
    python samples/reference_model/inspect_model.py --ppl-tokens 0 --acc-items 0   # all of it
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent
SEED = 1234
PROMPTS = ["The json module", "To read a file line by line,", "An exception is raised when"]
PROJECTIONS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored): every token after the first is scored exactly once."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        out.append((begin, end, min(end - prev_end, end - begin - 1)))
        prev_end = end
        if end == n:
            break
    return out


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, context: int, stride: int, batch: int = 16) -> float:
    assert ids.dim() == 1
    wins = windows(ids.numel(), context, stride)
    nll, count = 0.0, 0
    for i in range(0, len(wins), batch):
        group = wins[i:i + batch]
        for length in sorted({e - b for b, e, _ in group}):   # the last window may be shorter
            same = [w for w in group if w[1] - w[0] == length]
            x = torch.stack([ids[b:e] for b, e, _ in same])             # (B, L)
            logp = F.log_softmax(model(input_ids=x).logits.float(), -1)  # (B, L, V)
            tok_nll = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]   # (B, L-1)
            for row, (_, _, k) in zip(tok_nll, same):
                nll += row[-k:].sum().item()
                count += k
    return math.exp(nll / count)


@torch.inference_mode()
def mc_accuracy(model, tok, items: list[dict]) -> float:
    correct = 0
    for item in items:
        ctx = tok(item["context"]).input_ids
        seqs = [tok(item["context"] + c).input_ids for c in item["choices"]]
        assert all(s[:len(ctx)] == ctx for s in seqs), "choice tokens must extend the context"
        width = max(map(len, seqs))
        x = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])  # (4, W)
        logp = F.log_softmax(model(input_ids=x).logits.float(), -1)              # (4, W, V)
        scores = [logp[j, len(ctx) - 1:len(s) - 1].gather(-1, x[j, len(ctx):len(s), None]).sum()
                  for j, s in enumerate(seqs)]
        correct += int(torch.stack(scores).argmax()) == item["label"]
    return correct / len(items)


@torch.inference_mode()
def outlier_ratios(model, ids: torch.Tensor, context: int, n_windows: int) -> list[dict]:
    """Per layer and projection: max/median over input columns of max_t |x[t, col]|."""
    col_max, hooks = {}, []
    for li, layer in enumerate(model.model.layers):
        for name in PROJECTIONS:
            def hook(_mod, args, key=(li, name)):
                m = args[0].detach().abs().flatten(0, -2).amax(0)      # (in_features,)
                col_max[key] = torch.maximum(col_max[key], m) if key in col_max else m
            hooks.append(layer.get_submodule(name).register_forward_pre_hook(hook))
    n = min(n_windows, ids.numel() // context)
    model(input_ids=ids[:n * context].view(n, context))                 # (n, context)
    for h in hooks:
        h.remove()
    rows = []
    for li in range(len(model.model.layers)):
        row = {"layer": li}
        for name in PROJECTIONS:
            m = col_max[(li, name)]
            row[name.split(".")[1]] = (m.max() / m.median()).item()
            row[name.split(".")[1] + "_col"] = int(m.argmax())
        rows.append(row)
    return rows


def load_models(path: Path):
    trained = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    torch.manual_seed(SEED)                      # same seed and config as train.py's step 0
    random_init = AutoModelForCausalLM.from_config(trained.config, dtype=torch.float32)
    return trained.eval(), random_init.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=HERE)
    ap.add_argument("--heldout", type=Path, default=HERE / "heldout.txt")
    ap.add_argument("--accuracy", type=Path, default=HERE / "accuracy.jsonl")
    ap.add_argument("--ppl-tokens", type=int, default=16384, help="0: all of heldout.txt")
    ap.add_argument("--acc-items", type=int, default=100, help="0: all of accuracy.jsonl")
    ap.add_argument("--outlier-windows", type=int, default=16)
    args = ap.parse_args()
    t0 = time.time()
    torch.set_grad_enabled(False)
    tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    trained, random_init = load_models(args.model)
    context = trained.config.max_position_embeddings
    ids = torch.tensor(tok(args.heldout.read_text(encoding="utf-8")).input_ids)   # (N,)
    ppl_ids = ids[:args.ppl_tokens] if args.ppl_tokens else ids
    items = [json.loads(line) for line in args.accuracy.open(encoding="utf-8")]
    items = items[:args.acc_items] if args.acc_items else items
    n_params = sum(p.numel() for p in trained.parameters())
    print(f"model {args.model}: {n_params / 1e6:.2f}M params, context {context}")
    print(f"held-out: {ppl_ids.numel()} of {ids.numel()} tokens, window {context}, stride {context // 2}; "
          f"accuracy: {len(items)} items, 4 choices")
    for name, model in (("trained", trained), ("random-init", random_init)):
        ppl = perplexity(model, ppl_ids, context, context // 2)
        acc = mc_accuracy(model, tok, items)
        print(f"{name:12s} ppl {ppl:10.3f}   accuracy {acc:.3f}")

    print("\nsamples (seed %d, temperature 0.8, top-k 40):" % SEED)
    for prompt in PROMPTS:
        torch.manual_seed(SEED)
        x = tok(prompt, return_tensors="pt").input_ids
        y = trained.generate(x, do_sample=True, temperature=0.8, top_k=40, max_new_tokens=48,
                             pad_token_id=tok.pad_token_id)
        print("---", repr(tok.decode(y[0], skip_special_tokens=True)))

    n_tok = min(args.outlier_windows, ids.numel() // context) * context
    print(f"\ninput-column outliers, max/median of per-column max|x| over {n_tok} held-out tokens"
          " (col = argmax column):")
    print("layer   q_proj(col)    o_proj(col)    gate_proj(col)  down_proj(col)")
    for r in outlier_ratios(trained, ids, context, args.outlier_windows):
        cells = [f"{r[k]:7.1f} ({r[k + '_col']:4d})" for k in ("q_proj", "o_proj", "gate_proj", "down_proj")]
        print(f"{r['layer']:5d}  " + "  ".join(cells))
    rand = outlier_ratios(random_init, ids, context, args.outlier_windows)
    worst = max(r[k] for r in rand for k in ("q_proj", "o_proj", "gate_proj", "down_proj"))
    print(f"random-init: largest ratio over all layers and projections {worst:.1f}")
    print(f"\n({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
