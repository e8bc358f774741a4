"""Train the reference Llama on the GPU machine, then save it in Hugging Face form.

Two subcommands:

``train`` (GPU): trains ``LlamaForCausalLM`` (GQA 8 q / 2 kv heads, head_dim 64,
~27M parameters, context 256) on the uint16 token stream of
``train_tokenizer.py``, bf16 autocast, AdamW with linear warmup and cosine
decay, seeded. The corpus is small (~6.6M tokens), so it runs a short sweep
over (total steps, peak lr), one full cosine schedule per run from the same
seed, and keeps the run with the lowest val-split loss; the test split is
never read.
Every run is time-bounded. The chosen weights are written as fp16
safetensors shards (< 15 MB each, to come back from the GPU machine).

``save`` (CPU): merges the shards into ``model.safetensors`` (fp16) with
``config.json`` and ``generation_config.json`` beside the tokenizer.

    python samples/reference_model/train.py train --tokens .reftok --out $OUT
    python samples/reference_model/train.py save --shards OUTDIR --out samples/reference_model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SEED = 1234
SHARD_BYTES = 15_000_000
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: smoke tests only


def make_config(vocab_size: int = 8192, eot_id: int = 0):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=512, intermediate_size=1408,
        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
    )


def init_model(seed: int = SEED):
    """The model at step 0: same seed, same weights (also the random baseline)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(make_config())


@dataclass
class TrainArgs:
    steps: int
    batch: int = 64
    context: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 250
    seed: int = SEED


def lr_at(step: int, a: TrainArgs) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def lm_loss(model, chunk: torch.Tensor) -> torch.Tensor:
    x, y = chunk[:, :-1], chunk[:, 1:]                          # (B, S)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits = model(input_ids=x).logits                      # (B, S, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def val_loss(model, val: torch.Tensor, context: int, batch: int = 64) -> float:
    """Mean loss over non-overlapping windows of the val stream."""
    model.eval()
    n = (val.numel() - 1) // context
    starts = torch.arange(n, device=val.device) * context
    offs = torch.arange(context + 1, device=val.device)
    total = 0.0
    for i in range(0, n, batch):
        chunk = val[starts[i:i + batch, None] + offs]           # (b, S+1)
        total += lm_loss(model, chunk).item() * chunk.shape[0]
    model.train()
    return total / n


def train_one(train: torch.Tensor, val: torch.Tensor, a: TrainArgs, deadline: float) -> dict:
    model = init_model(a.seed).to(DEVICE)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=a.betas, fused=DEVICE == "cuda",
    )
    gen = torch.Generator(device=DEVICE).manual_seed(a.seed)
    offs = torch.arange(a.context + 1, device=DEVICE)
    hist, t0, step = {"step": [], "loss": [], "val": []}, time.time(), 0
    running = None
    for step in range(a.steps):
        if time.time() > deadline:
            print(f"  time budget reached at step {step}", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        starts = torch.randint(0, train.numel() - a.context - 1, (a.batch,), device=DEVICE, generator=gen)
        loss = lm_loss(model, train[starts[:, None] + offs])    # chunk (B, S+1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            v = val_loss(model, val, a.context)
            hist["step"].append(step + 1), hist["loss"].append(running), hist["val"].append(v)
            print(f"  step {step + 1:5d} lr {lr_at(step, a):.2e} train {running:.4f} "
                  f"val {v:.4f} ({time.time() - t0:.0f}s)", flush=True)
    done = step + 1 == a.steps and hist["step"] and hist["step"][-1] == a.steps
    return {"args": asdict(a), "complete": bool(done), "seconds": time.time() - t0,
            "final_train_loss": running, "final_val_loss": hist["val"][-1] if hist["val"] else None,
            "history": hist, "model": model}


def outliers(model, val: torch.Tensor, context: int) -> list[dict]:
    """Per layer: max/median of per-input-column max|x| (inspect_model.py's measure)."""
    from inspect_model import outlier_ratios

    model.eval()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        rows = outlier_ratios(model, val[:16 * context].cpu().to(DEVICE), context, 16)
    print("  outliers q/o/gate/down: " + " | ".join(
        f"{r['q_proj']:.1f}/{r['o_proj']:.1f}/{r['gate_proj']:.1f}/{r['down_proj']:.1f}" for r in rows), flush=True)
    return rows


def save_shards(model, out: Path) -> list[str]:
    """fp16 state dict (tied lm_head dropped) in safetensors shards < SHARD_BYTES."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous()
          for k, v in model.state_dict().items() if k != "lm_head.weight"}
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + nbytes
    shards.append(cur)
    names = []
    for i, shard in enumerate(shards):
        names.append(f"shard-{i:02d}.safetensors")
        save_file(shard, str(out / names[-1]))
    return names


def parse_runs(spec: str) -> list[tuple[int, float]]:
    return [(int(steps), float(lr)) for steps, lr in (run.split(":") for run in spec.split(","))]


def cmd_train(args: argparse.Namespace) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    meta = json.loads((args.tokens / "meta.json").read_text())
    load = lambda s: torch.from_numpy(np.fromfile(args.tokens / f"{s}.u16", dtype=np.uint16).astype(np.int64)).to(DEVICE)
    train, val = load("train"), load("val")
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"train {train.numel()} tokens, val {val.numel()} tokens, {device_name}", flush=True)
    deadline = time.time() + args.time_budget
    runs = []
    for steps, lr in args.runs:
        a = TrainArgs(steps=steps, batch=args.batch, lr=lr, seed=args.seed)
        epochs = steps * a.batch * a.context / train.numel()
        print(f"run: {steps} steps, lr {lr:g} ({epochs:.1f} epochs of the train split)", flush=True)
        runs.append(train_one(train, val, a, deadline))
        runs[-1]["outliers"] = outliers(runs[-1]["model"], val, a.context)
        if not runs[-1]["complete"]:
            break
    complete = [r for r in runs if r["complete"]] or runs
    best = min(complete, key=lambda r: r["final_val_loss"])
    n_params = sum(p.numel() for p in best["model"].parameters())
    print(f"chosen: {best['args']['steps']} steps, lr {best['args']['lr']:g}, val {best['final_val_loss']:.4f}, "
          f"train {best['final_train_loss']:.4f}, {best['seconds']:.0f}s, {n_params} params", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    shards = save_shards(best["model"], args.out)
    for r in runs:
        r.pop("model")
    summary = {"device": device_name, "torch": torch.__version__,
               "params": n_params, "chosen": best["args"], "shards": shards,
               "train_tokens": int(train.numel()), "val_tokens": int(val.numel()),
               "tokens_meta": meta, "runs": runs}
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def cmd_save(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    sd = {}
    for path in sorted(args.shards.glob("shard-*.safetensors")):
        sd.update(load_file(str(path)))
    model = init_model()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model = model.half()
    cfg = model.config
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
        do_sample=True, temperature=0.8, top_k=40,
    )
    model.save_pretrained(args.out)
    print(f"saved {sum(p.numel() for p in model.parameters())} params (fp16) -> {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on the GPU, write fp16 shards")
    t.add_argument("--tokens", type=Path, default=Path(".reftok"))
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--runs", type=parse_runs, default=parse_runs("3000:1e-3,3000:2e-3"),
                   help="sweep, STEPS:PEAK_LR,...")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--seed", type=int, default=SEED)
    t.add_argument("--time-budget", type=float, default=420.0, help="seconds for all runs together")
    s = sub.add_parser("save", help="merge shards into a Hugging Face model directory")
    s.add_argument("--shards", type=Path, required=True)
    s.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    {"train": cmd_train, "save": cmd_save}[args.cmd](args)


if __name__ == "__main__":
    main()
