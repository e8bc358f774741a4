"""Long-stream perplexity with attention sinks (StreamingLLM) vs a window without sinks and the full cache.

    python samples/streaming_results.py samples/reference_model --multiple 8

Scores the first ``multiple x context`` tokens of TEXT (default: the model's
heldout.txt) token by token through one KV cache (`planforge eval --stream`):

- within context: sliding windows of the trained context, re-computed every
  --stride tokens (every token keeps >= context - stride tokens of context);
  the quality a bounded cache should match;
- sinks + window: `optimize --streaming --sink-tokens S --window W`, S + W = context;
- window only: the same cache size with no sinks (`--sink-tokens 0`);
- full cache: the export re-made with --max-seq-len past the stream, every
  token attending to everything before it, far beyond the trained positions.

It also prints, per layer, how much attention the source model puts on its first
S positions (attention sinks are what makes the window-only cache fail in
StreamingLLM), so the table can be read against the model's own behaviour.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def stream_ppl(model_dir: Path, ids: np.ndarray) -> float:
    from planforge.evaluation.perplexity import stream_perplexity
    from planforge.evaluation.scorers import BackendScorer

    return stream_perplexity(BackendScorer(model_dir).stream_logprobs(ids), segment=len(ids)).perplexity


def sink_attention(source: Path, ids: np.ndarray, sinks: int) -> list[float]:
    """Mean attention weight (summed over the first ``sinks`` positions) of queries past the first quarter."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(torch.from_numpy(ids[None]), output_attentions=True).attentions
    start = len(ids) // 4
    return [float(a[0, :, start:, :sinks].sum(-1).mean()) for a in attentions]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="Hugging Face model directory (a rotary family)")
    parser.add_argument("--text", type=Path, default=None, help="stream text (default: MODEL/heldout.txt)")
    parser.add_argument("--multiple", type=int, default=8, help="stream length in trained contexts")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--stride", type=int, default=32, help="re-computation stride of the within-context row")
    args = parser.parse_args()

    from planforge.evaluation.perplexity import perplexity
    from planforge.evaluation.scorers import BackendScorer
    from planforge.exporter.api import ExportOptions, export
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.streaming_attention import StreamingOptions
    from planforge.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = export(str(args.model), tmp / "plain", ExportOptions())
        context = manifest.dims.max_seq_len
        text = (args.text or args.model / "heldout.txt").read_text()
        ids = np.array(Tokenizer(tmp / "plain").encode(text)[:args.multiple * context + 1], dtype=np.int64)
        window = context - args.sinks
        optimize(tmp / "plain", tmp / "sinks", OptimizeOptions(streaming=StreamingOptions(args.sinks, window)))
        optimize(tmp / "plain", tmp / "window", OptimizeOptions(streaming=StreamingOptions(0, context)))
        export(str(args.model), tmp / "full", ExportOptions(max_seq_len=len(ids)))

        within = perplexity(ids, BackendScorer(tmp / "plain").token_logprobs, context, args.stride).perplexity
        rows = [("within context (sliding windows, re-computed)", f"{context} (recompute every {args.stride})",
                 within),
                (f"sinks + window (S={args.sinks}, W={window})", f"{context} constant",
                 stream_ppl(tmp / "sinks", ids)),
                (f"window only (S=0, W={context})", f"{context} constant", stream_ppl(tmp / "window", ids)),
                ("full cache past the trained context", f"grows to {len(ids) - 1}", stream_ppl(tmp / "full", ids))]
        mass = sink_attention(args.model, ids[:context], args.sinks)

    print(f"\nstream: {len(ids) - 1} scored tokens = {(len(ids) - 1) / context:.0f} x the trained context {context}\n")
    print("| method | KV positions per layer | perplexity | vs within context |")
    print("|---|---|---|---|")
    for name, cache, ppl in rows:
        print(f"| {name} | {cache} | {ppl:.3f} | {ppl / within:.3f}x |")
    uniform = args.sinks / (context * 5 / 8)  # queries past the first quarter see ~5/8 of the context on average
    print(f"\nattention weight on the first {args.sinks} positions, per layer (uniform would be ~{uniform:.3f}): "
          + ", ".join(f"{m:.3f}" for m in mass))


if __name__ == "__main__":
    main()
