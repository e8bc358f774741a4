"""planforge against ONNX Runtime GenAI on the same model, in one run (the docs/results.md table).

    python samples/bench_peers.py samples/reference_model --out out/peers

Builds, from one Hugging Face directory: planforge fp32 (export: the portable graph), fp32
optimized (`optimize --quant none`: GroupQueryAttention over shared cache buffers and fused
residual norms), W4A16, W8A8 and
W4A4 (QUIK; `planforge optimize`, the default --target onnxruntime; W4A16 also with
--group 32, ORT-GenAI's int4 block; W4A4 calibrated on
the last quarter of heldout.txt, which the perplexity never reaches), and ONNX
Runtime GenAI's own fp32 and int4 builds (its model builder, `-p fp32|int4 -e cpu`:
block 32, accuracy level 4). Then, in interleaved rounds that each load every model
anew (a session's memory placement moves its speed by several percent), each timed
generation after a 0.2 s pause (so no other session's threads still spin), it times
greedy generation of --new-tokens tokens after a --prompt-tokens prompt at every
--batches size: planforge's models with planforge's runtime (its C++ generation loop where it can
be built, runtime/native.py),
ORT-GenAI's with its own client, planforge's fp32 graphs and W4A16 g32 with ORT-GenAI's client
too, and the optimized fp32 graph with planforge's Python loop. Both runtimes
get --threads intra-op threads. Perplexity: the first --ppl-tokens tokens of
heldout.txt in disjoint windows of the model's context (ORT-GenAI's models scored
through a plain ONNX Runtime session on their graph).

Prints the machine, the command, and a markdown table of medians with the IQR and
ratios against planforge fp32 measured in the same run; then each comparison as the ratio of
medians and the median (and range) of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planforge.evaluation.api import evaluate
from planforge.evaluation.perplexity import perplexity
from planforge.evaluation.scorers import gather_logprobs
from planforge.exporter.api import ExportOptions, export
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.schemes import QuantOptions
from planforge.manifest import model_file_bytes
from planforge.runtime import GenerationConfig, Generator, Tokenizer, open_backend


@dataclass
class Variant:
    name: str
    path: Path
    client: str  # "planforge", "planforge, Python loop" or "ort-genai"
    decode: dict = field(default_factory=dict)  # batch -> [tok/s per round]
    prefill_ms: list = field(default_factory=list)  # batch 1
    tokens: list = field(default_factory=list)  # greedy tokens of the last batch-1 round
    loop: str = ""  # planforge's generation loop that ran ("c++" or "python")
    perplexity: float = float("nan")


SETTLE_SECONDS = 0.2  # pause before each timed generation (see measure)


# ------------------------------------------------------------------------------------------- building
def build_planforge(model: Path, out: Path) -> dict[str, Path]:
    text = (model / "heldout.txt").read_text()
    calib = out / "calib.txt"
    calib.write_text(text[3 * len(text) // 4:])  # the last quarter: perplexity scores only the start
    export(str(model), out / "fp32", ExportOptions(force=True))
    schemes = {"fp32-optimized": None, "w4a16": QuantOptions("w4a16"), "w4a16-g32": QuantOptions("w4a16", group=32),
               "w8a8": QuantOptions("w8a8"), "w4a4": QuantOptions("w4a4")}
    for name, quant in schemes.items():
        optimize(out / "fp32", out / name, OptimizeOptions(quant=quant, calib=calib if quant else None, force=True))
    return {"fp32": out / "fp32", **{name: out / name for name in schemes}}


def build_ort_genai(model: Path, out: Path, precision: str) -> Path:
    target = out / f"ort-genai-{precision}"
    shutil.rmtree(target, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o",
                           str(target), "-p", precision, "-e", "cpu", "-c", str(out / "builder-cache")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the ORT-GenAI builder failed for {precision}:\n{proc.stderr[-2000:]}")
    return target


# -------------------------------------------------------------------------------------------- running
class PlanforgeRunner:
    def __init__(self, path: Path, threads: int, native_loop: bool = True):
        self.generator = Generator(open_backend(path, threads=threads), native_loop=native_loop)

    def generate(self, prompts: np.ndarray, new_tokens: int) -> tuple[float, float, list]:
        """-> (prefill seconds, decode tokens/s over the batch, the first row's tokens)."""
        result = self.generator.generate(prompts.tolist(), GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True))
        self.loop = result.loop
        return result.prefill_seconds, result.decode_tokens_per_second, result.tokens[0]


class OrtGenAIRunner:
    def __init__(self, path: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(path))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)

    def generate(self, prompts: np.ndarray, new_tokens: int) -> tuple[float, float, list]:
        og = self.og
        params = og.GeneratorParams(self.model)
        length = prompts.shape[1] + new_tokens
        params.set_search_options(max_length=length, min_length=length, batch_size=len(prompts), do_sample=False)
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(prompts.astype(np.int32))  # the prefill
        prefill = time.perf_counter() - start
        steps = []
        while not generator.is_done():  # each call: pick a token, run one decode step
            start = time.perf_counter()
            generator.generate_next_token()
            steps.append(time.perf_counter() - start)
        # The last call appends the last token and runs no step; count the steps that produced the others.
        decoded = len(prompts) * (len(steps) - 1)
        return prefill, decoded / sum(steps[:-1]), [int(t) for t in generator.get_sequence(0)[prompts.shape[1]:]]


def _runner(variant: Variant, threads: int):
    if variant.client == "ort-genai":
        return OrtGenAIRunner(variant.path, threads)
    return PlanforgeRunner(variant.path, threads, native_loop=variant.client == "planforge")


def measure(variants: list[Variant], args, vocab: int) -> None:
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(1, vocab, (b, args.prompt_tokens)) for b in args.batches}
    for r in range(args.rounds):
        runners = [(v, _runner(v, args.threads)) for v in variants]
        order = runners if r % 2 == 0 else runners[::-1]  # no variant always runs right after the same one
        for batch in args.batches:
            for variant, runner in order:
                runner.generate(prompts[batch][:, :8], 2)  # warm-up of this session at this batch
                # Let the previous session's worker threads stop spinning: started right after another
                # session's run, a 128-token prefill measured 1.4-1.7x slower on the 2-core machine.
                time.sleep(SETTLE_SECONDS)
                prefill, decode, tokens = runner.generate(prompts[batch], args.new_tokens)
                variant.decode.setdefault(batch, []).append(decode)
                variant.loop = getattr(runner, "loop", "")
                if batch == 1:
                    variant.prefill_ms.append(1000 * prefill)
                    variant.tokens = tokens
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- perplexity
def ort_genai_perplexity(path: Path, ids: np.ndarray, context: int, threads: int) -> float:
    """Prefill logits of ORT-GenAI's graph through a plain ONNX Runtime session, one window at a time."""
    import onnxruntime as ort

    config = json.loads((path / "genai_config.json").read_text())["model"]
    decoder = config["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path / decoder["filename"]), options, providers=["CPUExecutionProvider"])
    kv_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    empties = {i.name: np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), kv_type[i.type])
               for i in session.get_inputs() if i.name.startswith("past_key_values")}

    def token_logprobs(window: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": window[None], "attention_mask": np.ones((1, len(window)), np.int64), **empties}
        feeds = {name: value for name, value in feeds.items() if name in {i.name for i in session.get_inputs()}}
        logits = session.run(["logits"], feeds)[0][0].astype(np.float32)
        return gather_logprobs(logits, window)

    return perplexity(ids, token_logprobs, context).perplexity


def score(variants: list[Variant], model: Path, args) -> None:
    text = model / "heldout.txt"
    for variant in variants:
        if variant.client == "planforge":
            variant.perplexity = evaluate(variant.path, text, None, max_tokens=args.ppl_tokens)["ppl"]
    tokenizer = Tokenizer(variants[0].path)
    ids = np.array(tokenizer.encode(text.read_text()), dtype=np.int64)[:args.ppl_tokens]
    context = json.loads((variants[0].path / "planforge.json").read_text())["dims"]["max_seq_len"]
    for variant in variants:
        if variant.client == "ort-genai" and variant.name.startswith("ORT-GenAI"):
            variant.perplexity = ort_genai_perplexity(variant.path, ids, context, args.threads)


# -------------------------------------------------------------------------------------------- report
def _median_iqr(values: list[float]) -> str:
    q1, q3 = np.percentile(values, [25, 75])
    return f"{statistics.median(values):.1f} [{q1:.0f}-{q3:.0f}]"


def report(variants: list[Variant], args) -> None:
    import onnxruntime
    import onnxruntime_genai

    import planforge

    base = variants[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"\nmachine: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; python {platform.python_version()}, "
          f"onnxruntime {onnxruntime.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}, "
          f"planforge {planforge.__version__}; {args.threads} intra-op threads for both runtimes")
    print(f"command: python samples/bench_peers.py {' '.join(sys.argv[1:])}")
    from planforge.runtime import native

    loops = ", ".join(f"{v.name}: {'C++' if v.loop == 'c++' else 'Python'}" for v in variants if v.client == "planforge")
    print(f"planforge's generation loop (client \"planforge\"): {loops}"
          + (f" ({native.unavailable_reason()})" if native.unavailable_reason() else ""))
    print(f"greedy, {args.prompt_tokens}-token random prompts, {args.new_tokens} new tokens, {args.rounds} rounds "
          f"(medians [IQR]); perplexity over {args.ppl_tokens} held-out tokens\n")
    batches = args.batches
    header = ["model", "client", "MB", "prefill ms"] + [f"decode tok/s b{b}" for b in batches]
    header += [f"b{b} vs planforge fp32" for b in batches] + ["perplexity"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for v in variants:
        size = model_file_bytes(v.path) if (v.path / "planforge.json").exists() else sum(
            f.stat().st_size for f in v.path.glob("model.onnx*"))
        cells = [v.name, v.client, f"{size / 1e6:.1f}", f"{statistics.median(v.prefill_ms):.1f}"]
        cells += [_median_iqr(v.decode[b]) for b in batches]
        cells += [f"{statistics.median(v.decode[b]) / statistics.median(base.decode[b]):.2f}x" for b in batches]
        cells += ["—" if np.isnan(v.perplexity) else f"{v.perplexity:.3f}"]
        print("| " + " | ".join(cells) + " |")
    by_name = {v.name: v for v in variants}
    same = by_name["planforge fp32"].tokens == by_name["planforge fp32, ORT-GenAI client"].tokens
    print(f"\nplanforge fp32: same greedy tokens from planforge's runtime and ORT-GenAI's client: {'yes' if same else 'NO'}")
    for ours, theirs in (("planforge w4a16", "ORT-GenAI int4"), ("planforge w4a16 g32", "ORT-GenAI int4"),
                         ("planforge fp32", "planforge fp32, ORT-GenAI client"),
                         ("planforge fp32 optimized", "planforge fp32 optimized, ORT-GenAI client"),
                         ("planforge fp32 optimized, Python loop", "planforge fp32 optimized, ORT-GenAI client"),
                         ("planforge w4a16 g32", "planforge w4a16 g32, ORT-GenAI client"),
                         ("planforge w4a16 g32, ORT-GenAI client", "ORT-GenAI int4"),
                         ("planforge w4a4", "planforge fp32"), ("planforge w4a4", "planforge fp32 optimized")):
        cells = []
        for b in batches:
            a, c = by_name[ours].decode[b], by_name[theirs].decode[b]
            # The same round ran both a few seconds apart, so the per-round ratio cancels the machine's drift
            # (on a shared 2-core VM, a whole round can run 20% slower than the next).
            paired = sorted(x / y for x, y in zip(a, c))
            cells.append(f"{statistics.median(a) / statistics.median(c):.2f}x at batch {b} (per round: median "
                         f"{statistics.median(paired):.2f}x, {paired[0]:.2f}-{paired[-1]:.2f})")
        print(f"{ours} / {theirs}: decode " + ", ".join(cells))
    w4a4 = by_name["planforge w4a4"]
    for base_name in ("planforge fp32", "planforge fp32 optimized"):
        ratio = statistics.median(w4a4.prefill_ms) / statistics.median(by_name[base_name].prefill_ms)
        print(f"planforge w4a4 / {base_name}: prefill time {ratio:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(Path(__file__).resolve().parent / "reference_model"),
                        help="Hugging Face model directory with heldout.txt beside the weights")
    parser.add_argument("--out", type=Path, default=Path("out/peers"), help="where the models are built")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, each loading every model anew")
    parser.add_argument("--ppl-tokens", type=int, default=4096, help="held-out tokens scored for perplexity")
    args = parser.parse_args()
    model, out = Path(args.model), args.out
    if not (model / "config.json").is_file() or not (model / "heldout.txt").is_file():
        parser.error(f"{model} needs config.json and heldout.txt (the shipped samples/reference_model has both)")
    out.mkdir(parents=True, exist_ok=True)
    print("building planforge's models and ORT-GenAI's fp32 and int4 builds", file=sys.stderr, flush=True)
    ours = build_planforge(model, out)
    peers = {p: build_ort_genai(model, out, p) for p in ("fp32", "int4")}
    variants = [Variant("planforge fp32", ours["fp32"], "planforge"),
                Variant("planforge fp32, ORT-GenAI client", ours["fp32"], "ort-genai"),
                Variant("planforge fp32 optimized", ours["fp32-optimized"], "planforge"),
                Variant("planforge fp32 optimized, ORT-GenAI client", ours["fp32-optimized"], "ort-genai"),
                Variant("planforge fp32 optimized, Python loop", ours["fp32-optimized"], "planforge, Python loop"),
                Variant("planforge w4a16", ours["w4a16"], "planforge"),
                Variant("planforge w4a16 g32", ours["w4a16-g32"], "planforge"),
                Variant("planforge w4a16 g32, ORT-GenAI client", ours["w4a16-g32"], "ort-genai"),
                Variant("planforge w8a8", ours["w8a8"], "planforge"),
                Variant("planforge w4a4", ours["w4a4"], "planforge"),
                Variant("ORT-GenAI fp32", peers["fp32"], "ort-genai"),
                Variant("ORT-GenAI int4", peers["int4"], "ort-genai")]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    measure(variants, args, vocab)
    score(variants, model, args)
    report(variants, args)


if __name__ == "__main__":
    main()
