"""A random-weight Llama with the reference model's tokenizer, at a size you choose (for speed, not quality).

    python samples/make_scaled_model.py out/scaled-1024 --hidden 1024 --intermediate 2816 --layers 8
    python samples/bench_peers.py out/scaled-1024 --out out/peers-1024

The reference model (hidden 512) is small enough that a decode step's fixed cost per ONNX Runtime
node is a large part of it; this model keeps the reference model's vocabulary, context,
tokenizer and heldout.txt (so every benchmark that takes the reference model takes it too) and
scales the layers, so the same benchmark shows how the numbers move when the GEMMs grow. Its
weights are transformers' random initialisation (seeded): its perplexity is near the vocabulary
size and says nothing about any quantization's accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference_model"
COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "heldout.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the Hugging Face directory to write (must not exist)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size")
    parser.add_argument("--intermediate", type=int, default=2816, help="MLP intermediate size")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers")
    parser.add_argument("--heads", type=int, default=16, help="query heads (head_dim = hidden / heads)")
    parser.add_argument("--kv-heads", type=int, default=4, help="key/value heads (GQA)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new directory (nothing was written)")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error(f"--hidden {args.hidden} must divide by --heads {args.heads}, and --heads by --kv-heads "
                     f"{args.kv_heads}")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    reference = json.loads((REFERENCE / "config.json").read_text())
    config = LlamaConfig(**{**reference, "hidden_size": args.hidden, "intermediate_size": args.intermediate,
                            "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
                            "num_key_value_heads": args.kv_heads, "head_dim": args.hidden // args.heads,
                            "dtype": "float32"})
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).eval()
    partial = args.out.with_name(args.out.name + ".partial")  # written whole, then renamed: no half directory
    try:
        model.save_pretrained(partial)
        for name in COPIED:
            (partial / name).write_bytes((REFERENCE / name).read_bytes())
        partial.rename(args.out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # left only if something above failed
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {params / 1e6:.1f}M parameters, hidden {args.hidden}, {args.layers} layers", file=sys.stderr)


if __name__ == "__main__":
    main()
