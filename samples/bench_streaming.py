"""Constant cost of a streaming KV cache: decode time and memory after 1x, 4x and 16x the trained context.

    python samples/bench_streaming.py samples/reference_model --multiples 1 4 16

For each stream length L (a multiple of the trained context) and each variant, a
fresh process loads the compiled model on ONNX Runtime (CPU), takes L tokens of
heldout text into its KV cache, then times --decode greedy one-token steps:

- streaming: `optimize --streaming` (4 sinks + the rest of the context as window),
  which takes the stream the way the runtime does (cache fill, then one token per step);
- full cache: the same model exported with --max-seq-len past the longest stream,
  fed in chunks of one context (so no L x L attention matrix inflates its memory);
- window recompute: no cache, every token re-runs the last context of tokens
  (StreamingLLM's sliding-window-with-recomputation baseline); same cost at any length.

It prints the KV cache size, the process's peak resident memory, and the median
decode step time, with the full cache's ratio to streaming at the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def recompute(model_dir: Path, text: Path, length: int, decode: int) -> dict:
    """Each step re-runs the last context-length tokens from scratch."""
    from planforge.runtime import open_backend
    from planforge.tokenizer import Tokenizer

    session = open_backend(model_dir)
    context = session.manifest.dims.max_seq_len
    ids = Tokenizer(model_dir).encode(text.read_text())[:length]
    times = []
    for _ in range(decode):
        window = np.array(ids[-context:], dtype=np.int64)[None]
        start = time.perf_counter()
        logits = session.prefill_logits(window)
        times.append(time.perf_counter() - start)
        ids.append(int(logits[0, -1].argmax()))
    return {"kv_mb": 0.0, "cache_positions": 0, "peak_rss_mb": _peak_rss_mb(),
            "decode_ms": 1e3 * statistics.median(times)}


def child(model_dir: Path, text: Path, length: int, decode: int) -> dict:
    from planforge.runtime import Generator, open_backend
    from planforge.tokenizer import Tokenizer

    session = open_backend(model_dir)
    ids = np.array(Tokenizer(model_dir).encode(text.read_text())[:length], dtype=np.int64)[None]
    assert ids.shape[1] == length, f"{text} holds fewer than {length} tokens"
    generator = Generator(session)
    if session.manifest.streaming:
        logits, cache, positions, mask = generator.prefill(ids, np.ones_like(ids))
    else:  # chunked prefill through the growing cache
        cache, context = session.empty_cache(1), 256
        for start in range(0, length, context):
            chunk = ids[:, start:start + context]
            mask = np.ones((1, start + chunk.shape[1]), dtype=np.int64)
            logits, cache = session.forward(chunk, mask, np.arange(start, start + chunk.shape[1])[None], cache)
        logits, positions = logits[:, -1], np.array([length - 1])
    times = []
    for _ in range(decode):
        token = logits.argmax(-1)
        mask = generator.next_mask(mask)
        start = time.perf_counter()
        logits, cache, positions = generator.decode_one_token(token, mask, positions, cache)
        times.append(time.perf_counter() - start)
    return {"kv_mb": sum(v.numpy().nbytes for v in cache.values) / 1e6, "cache_positions": cache.length,
            "peak_rss_mb": _peak_rss_mb(),
            "decode_ms": 1e3 * statistics.median(times)}


def _peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM: per address space, so not the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def run_child(model_dir: Path, text: Path, length: int, decode: int, mode: str = "cache") -> dict:
    proc = subprocess.run([sys.executable, __file__, str(model_dir), "--child", str(model_dir), "--text", str(text),
                           "--length", str(length), "--decode", str(decode), "--mode", mode],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="Hugging Face model directory (a rotary family)")
    parser.add_argument("--text", type=Path, default=None, help="stream text (default: MODEL/heldout.txt)")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--decode", type=int, default=32, help="timed decode steps after the stream")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["cache", "recompute"], default="cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    text = args.text or args.model / "heldout.txt"
    if args.child is not None:
        measure = recompute if args.mode == "recompute" else child
        print(json.dumps(measure(args.child, text, args.length, args.decode)))
        return

    from planforge.exporter.api import ExportOptions, export
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.streaming_attention import StreamingOptions

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        context = export(str(args.model), tmp / "plain", ExportOptions()).dims.max_seq_len
        optimize(tmp / "plain", tmp / "streaming", OptimizeOptions(streaming=StreamingOptions(4, context - 4)))
        longest = max(args.multiples) * context + args.decode + 1
        export(str(args.model), tmp / "full", ExportOptions(max_seq_len=longest))
        rows = []
        for multiple in args.multiples:
            length = multiple * context
            stream = run_child(tmp / "streaming", text, length, args.decode)
            full = run_child(tmp / "full", text, length, args.decode)
            rows.append((multiple, length, stream, full))
        window = run_child(tmp / "plain", text, context, args.decode, mode="recompute")

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, ONNX Runtime CPU, fp32, "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.decode} decode steps after the stream\n")
    print("| stream | tokens | variant | KV positions | KV cache MB | peak RSS MB | decode ms/token | vs streaming |")
    print("|---|---|---|---|---|---|---|---|")
    for multiple, length, stream, full in rows:
        for name, r in (("streaming (4 sinks + window)", stream), ("full cache", full)):
            print(f"| {multiple}x | {length} | {name} | {r['cache_positions']} | {r['kv_mb']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['decode_ms']:.2f} | {r['decode_ms'] / stream['decode_ms']:.2f}x |")
    last = rows[-1][2]
    print(f"| any | any | window recompute (no cache) | 0 | 0.0 | {window['peak_rss_mb']:.0f} | "
          f"{window['decode_ms']:.2f} | {window['decode_ms'] / last['decode_ms']:.2f}x (vs the last streaming row) |")


if __name__ == "__main__":
    main()
