"""Where a decode step's time goes on ONNX Runtime: inside the run, and in Python between two runs.

    python samples/bench_step_overhead.py out/peers/w4a16 [--tokens 64] [--rounds 4] [--profile]

Generates greedily with planforge's ``Generator`` (its Python loop: the C++ one, which `planforge run`
uses on the CPU, makes no Python call to time) after a 128-token prompt and times every call
into ONNX Runtime (``run_with_iobinding`` on shared cache buffers, ``run_with_ort_values`` on
the concat cache). Prints, per round, decode tokens/s and the medians of the time in the run and
of the gap between the end of one run and the start of the next (the runtime loop's own cost).
With ``--profile``, ONNX Runtime's profiler also runs in planforge's session and in ONNX Runtime
GenAI's on the same directory, and the kernel time per decode step is printed by op for both.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
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


def kernel_us_per_step(profile: Path, steps: int) -> dict[str, float]:
    """Kernel µs per op over the last ``steps`` runs of an ONNX Runtime profile (the decode steps)."""
    events = json.loads(profile.read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first = runs[-steps]
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            totals[e["args"]["op_name"]] += e["dur"] / steps
    return dict(totals)


def profile_both(model: Path, prompt: list, tokens: int, threads: int) -> None:
    import onnxruntime
    import onnxruntime_genai as og

    work = Path(tempfile.mkdtemp(prefix="planforge_profile_"))
    original = onnxruntime.InferenceSession

    def profiled(path, options=None, **kwargs):
        options.enable_profiling, options.profile_file_prefix = True, str(work / "planforge")
        return original(path, options, **kwargs)

    onnxruntime.InferenceSession = profiled
    try:
        backend = open_backend(model, threads=threads)
    finally:
        onnxruntime.InferenceSession = original
    Generator(backend, native_loop=False).generate(prompt, GenerationConfig(max_new_tokens=tokens, ignore_eos=True))
    ours = kernel_us_per_step(Path(backend._session.end_profiling()), tokens - 1)
    config = og.Config(str(model))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "enable_profiling": str(work / "genai")}}}}))
    genai = og.Model(config)
    params = og.GeneratorParams(genai)
    length = len(prompt[0]) + tokens
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(genai, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    del generator, params, genai, config  # ORT-GenAI writes its profile when the session closes
    theirs = kernel_us_per_step(next(work.glob("genai*.json")), tokens - 1)
    print("\n| op | kernel µs per decode step, planforge | ORT-GenAI, same graph |\n|---|---|---|")
    for op in sorted(set(ours) | set(theirs), key=lambda o: -ours.get(o, 0))[:10]:
        print(f"| {op} | {ours.get(op, 0):.0f} | {theirs.get(op, 0):.0f} |")
    print(f"| all | {sum(ours.values()):.0f} | {sum(theirs.values()):.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a planforge model directory (ONNX Runtime backend)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true",
                        help="Also profile the kernels in planforge's session and in ORT-GenAI's on the same graph.")
    args = parser.parse_args()
    backend = open_backend(args.model, threads=args.threads)
    marks: list = []
    backend._session._sess = _TimedSession(backend._session._sess, marks)
    generator = Generator(backend, native_loop=False)  # the Python loop, whose calls into ONNX Runtime are timed
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
    if args.profile:
        profile_both(args.model, prompt, args.tokens, args.threads)


if __name__ == "__main__":
    main()
