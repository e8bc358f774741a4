"""Where a decode step's time goes on ONNX Runtime: inside the run, and in Python between two runs.

    python samples/bench_step_overhead.py out/peers/w4a16 [--tokens 64] [--rounds 4]

Generates greedily with planforge's ``Generator`` after a 128-token prompt and times every call
into ONNX Runtime (``run_with_iobinding`` on shared cache buffers, ``run_with_ort_values`` on
the concat cache). Prints, per round, decode tokens/s and the medians of the time in the run and
of the gap between the end of one run and the start of the next (the runtime loop's own cost).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from planforge.runtime import GenerationConfig, Generator, open_backend


class _TimedSession:
    """Stands in for the C-level session: records (start, end) of each run, forwards everything else."""

    def __init__(self, session, marks: list):
        self._session, self._marks = session, marks

    def _timed(self, run, *args):
        start = time.perf_counter()
        result = run(*args)
        self._marks.append((start, time.perf_counter()))
        return result

    def run_with_iobinding(self, *args):
        return self._timed(self._session.run_with_iobinding, *args)

    def run_with_ort_values(self, *args):
        return self._timed(self._session.run_with_ort_values, *args)

    def __getattr__(self, name):
        return getattr(self._session, name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a planforge model directory (ONNX Runtime backend)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    backend = open_backend(args.model, threads=args.threads)
    marks: list = []
    backend._session._sess = _TimedSession(backend._session._sess, marks)
    generator = Generator(backend)
    vocab = backend.manifest.dims.vocab_size
    prompt = np.random.default_rng(0).integers(1, vocab, (1, 128)).tolist()
    generator.generate([prompt[0][:8]], GenerationConfig(max_new_tokens=2, ignore_eos=True))
    print(f"{args.model}: {'shared cache buffers' if backend.manifest.io.get('past_present_share_buffer') else 'concat cache'}")
    print("| round | decode tok/s | run µs (median) | between runs µs (median) |")
    print("|---|---|---|---|")
    for r in range(args.rounds):
        marks.clear()
        result = generator.generate(prompt, GenerationConfig(max_new_tokens=args.tokens, ignore_eos=True))
        runs = [end - start for start, end in marks[1:]]  # the decode steps (the first run is the prefill)
        gaps = [marks[i + 1][0] - marks[i][1] for i in range(1, len(marks) - 1)]
        print(f"| {r + 1} | {result.decode_tokens_per_second:.0f} | {statistics.median(runs) * 1e6:.0f} | "
              f"{statistics.median(gaps) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
