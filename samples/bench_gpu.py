"""End to end on one GPU: planforge's torch backend on the lowered graph against transformers, in one run.

    python samples/bench_gpu.py --work /tmp/bench --out results.json [--layers 8] [--quick]

Models: a Llama-shaped model with 7B dimensions (hidden 4096, 32 query / 8 KV heads, MLP 11008,
vocabulary 32000, random bf16 weights, ``--layers`` of its 32 layers), and the shipped reference
model (its 256 trained positions bound its contexts). Each is exported in bf16 and lowered with
``planforge build --target torch``.

Measured, medians, with ratios against transformers bf16 (SDPA, its dynamic cache, eager) in the
same run: decode tokens/s at batch 1 and 16 after a 1k and a 4k context, prefill tokens/s at 2k,
peak GPU memory, and average board power from NVML during decode. Both sides copy the last
logits to the host every step (what a sampler on the host needs). The last thing printed is the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parent / "reference_model"
W4A4_NAME = "planforge torch backend W4A4 (QUIK, fp16, lowered, CUDA graphs)"
DECODE_STEPS = 32


class PowerSampler:
    """Average board power (W) from NVML while the block runs; None where NVML is missing."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    def __enter__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # noqa: BLE001 (no NVML: no power column)
            self._thread = None
            return self

        def sample():
            while not self._stop.is_set():
                self.samples.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def watts(self):
        return statistics.mean(self.samples) if self.samples else None


def make_llama_7b_shape(directory: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (directory / "config.json").is_file():
        return directory
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192, rope_theta=10000.0,
                         torch_dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # token ids only matter here; any tokenizer will do
        (directory / name).write_bytes((REFERENCE / name).read_bytes())
    del model
    torch.cuda.empty_cache()
    return directory


def compile_model(source: Path, work: Path) -> Path:
    """bf16 export, lowered for torch."""
    from planforge.exporter.api import ExportOptions, export
    from planforge.graph_passes.api import OptimizeOptions, optimize

    portable, lowered = work / "portable", work / "lowered"
    if not portable.exists():
        export(str(source), portable, ExportOptions(dtype="bf16"))
    if not lowered.exists():
        optimize(portable, lowered, OptimizeOptions(target="torch"))
    return lowered


def compile_w4a4(source: Path, work: Path) -> Path:
    """fp16 export, W4A4 (QUIK; INT8 down_proj; RTN, no outlier columns: random weights need no calibration
    for a speed measurement), lowered for torch: QuikQuantize/QuikMatMul plus the fused attention."""
    from planforge.exporter.api import ExportOptions, export
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.schemes import QuantOptions

    fp16, quantized, lowered = work / "fp16", work / "w4a4", work / "w4a4_lowered"
    if not fp16.exists():
        export(str(source), fp16, ExportOptions(dtype="fp16"))
    if not quantized.exists():
        optimize(fp16, quantized, OptimizeOptions(quant=QuantOptions("w4a4", outliers="0", clip_search=False),
                                                  embedding="float", target="portable"))
    if not lowered.exists():
        optimize(quantized, lowered, OptimizeOptions(target="torch"))
    return lowered


def _time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class HFSide:
    name = "transformers bf16 (SDPA, eager)"

    def __init__(self, source: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, attn_implementation="sdpa")
        self.model = self.model.cuda().eval()

    @torch.inference_mode()
    def prefill(self, ids: np.ndarray):
        out = self.model(torch.from_numpy(ids).cuda(), use_cache=True)
        out.logits[:, -1].float().cpu()
        return out.past_key_values

    @torch.inference_mode()
    def decode(self, cache, ids: np.ndarray, steps: int):
        tokens = torch.from_numpy(ids[:, -1:]).cuda()
        for _ in range(steps):
            out = self.model(tokens, past_key_values=cache, use_cache=True)
            out.logits[:, -1].float().cpu()
            cache = out.past_key_values


class PlanforgeSide:
    name = "planforge torch backend bf16 (lowered, CUDA graphs)"

    def __init__(self, lowered: Path, name: str = ""):
        self.name = name or self.name
        from planforge.runtime import open_backend

        self.backend = open_backend(lowered, "torch", device="cuda")
        self._buffers: dict[int, list] = {}

    def prefill(self, ids: np.ndarray):
        """From an empty cache in the same buffers each time (as a serving loop reuses its allocation), so the
        decode steps replay the graph captured for them instead of capturing again."""
        from planforge.runtime.backends.torch import InPlaceKVCache

        b = self.backend
        B, S = ids.shape
        if B not in self._buffers:
            self._buffers = {B: b.empty_cache(B).buffers}  # one batch size's buffers at a time
        empty = InPlaceKVCache(self._buffers[B], np.zeros(B, np.int64), 0)
        _, cache = b.forward(ids, np.ones((B, S), np.int64), np.tile(np.arange(S), (B, 1)), empty, last_only=True)
        return cache

    def decode(self, cache, ids: np.ndarray, steps: int):
        b, (B, S) = self.backend, ids.shape
        token = ids[:, -1:]
        for t in range(steps):
            mask = np.ones((B, S + t + 1), np.int64)
            _, cache = b.forward(token, mask, np.full((B, 1), S + t), cache)


def measure(side, vocab: int, contexts: list[int], batches: list[int], prefill_len: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    row: dict = {}
    for context in contexts:
        for batch in batches:
            ids = rng.integers(1, vocab, (batch, context))
            torch.cuda.reset_peak_memory_stats()
            cache = side.prefill(ids)
            side.decode(cache, ids, 2)  # warm-up: kernel compilation, autotuning, graph capture
            times, power = [], None
            for _ in range(reps):
                cache = side.prefill(ids)
                with PowerSampler() as sampler:
                    times.append(_time(lambda: side.decode(cache, ids, DECODE_STEPS), 1))
                power = sampler.watts
            row[f"decode_b{batch}_ctx{context}"] = batch * DECODE_STEPS / statistics.median(times)
            row[f"peak_gib_b{batch}_ctx{context}"] = torch.cuda.max_memory_allocated() / 2**30
            row[f"watts_b{batch}_ctx{context}"] = power
            del cache
            torch.cuda.empty_cache()
    ids = rng.integers(1, vocab, (1, prefill_len))
    side.prefill(ids)
    row[f"prefill_{prefill_len}"] = prefill_len / _time(lambda: side.prefill(ids), reps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planforge_bench_gpu"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=8, help="Layers of the 7B-shaped model (of 32).")
    parser.add_argument("--quick", action="store_true", help="1k context only, 2 repetitions.")
    parser.add_argument("--no-w4a4", action="store_true", help="Skip the W4A4 (QUIK) rows.")
    parser.add_argument("--profile-prefill", action="store_true",
                        help="Only profile one 2k prefill of the 7B-shaped model on planforge (torch.profiler table).")
    args = parser.parse_args()
    if args.profile_prefill:
        return profile_prefill(compile_model(make_llama_7b_shape(args.work / "llama7b_hf", args.layers),
                                             args.work / "llama-7b-shape"))
    reps = 2 if args.quick else 3
    args.work.mkdir(parents=True, exist_ok=True)
    models = {
        f"llama-7b-shape x{args.layers} layers": (make_llama_7b_shape(args.work / "llama7b_hf", args.layers), 32000,
                                                   [1024] if args.quick else [1024, 4096], 2048),
        "reference model": (REFERENCE, 8192, [192], 224),  # 256 trained positions
    }
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "decode_steps": DECODE_STEPS,
               "models": {}}
    from planforge.manifest import model_file_bytes

    for label, (source, vocab, contexts, prefill_len) in models.items():
        t0 = time.time()
        work = args.work / label.split()[0]
        lowered = compile_model(source, work)
        w4a4 = compile_w4a4(source, work) if not args.no_w4a4 else None
        print(f"[{label}] exported and lowered in {time.time() - t0:.0f} s", flush=True)
        rows = {}
        sides = [lambda: HFSide(source), lambda: PlanforgeSide(lowered)]
        if w4a4 is not None:
            sides.append(lambda: PlanforgeSide(w4a4, W4A4_NAME))
        for make in sides:
            side = make()
            rows[side.name] = measure(side, vocab, contexts, [1, 16], prefill_len, reps)
            print(f"[{label}] {side.name}: {json.dumps(rows[side.name])}", flush=True)
            del side
            torch.cuda.empty_cache()
        results["models"][label] = rows
        results.setdefault("weights_mb", {})[label] = {
            "bf16": model_file_bytes(lowered) / 1e6, **({"w4a4": model_file_bytes(w4a4) / 1e6} if w4a4 else {})}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print_table(results)


def profile_prefill(lowered: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    side = PlanforgeSide(lowered)
    ids = np.random.default_rng(0).integers(1, 32000, (1, 2048))
    side.prefill(ids)
    graph, b = side.backend._graph, side.backend
    feeds = {"input_ids": torch.from_numpy(ids).cuda(), "position_ids": torch.arange(2048).cuda()[None],
             "past_lengths": torch.zeros(1, dtype=torch.int32, device="cuda"),
             **dict(zip(b._cache_names, b.empty_cache(1).buffers))}
    print(f"graph run only: {_time(lambda: graph.run(feeds), 3) * 1e3:.1f} ms; with the logits to the host: "
          f"{_time(lambda: side.prefill(ids), 3) * 1e3:.1f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        graph.run(feeds)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


def print_table(results: dict) -> None:
    print(f"\n{results['device']}, torch {results['torch']}; medians of the same run; bf16 ratio = planforge bf16 / "
          "transformers bf16; W4A4 ratio = W4A4 / planforge bf16")
    for label, rows in results["models"].items():
        hf, pf, q = rows[HFSide.name], rows[PlanforgeSide.name], rows.get(W4A4_NAME, {})
        print(f"\n{label}\n| metric | transformers bf16 | planforge bf16 | bf16 ratio | planforge W4A4 | W4A4 ratio |"
              "\n|---|---|---|---|---|---|")
        for key in hf:
            a, b, c = hf[key], pf.get(key), q.get(key)
            cells = [f"{v:.1f}" if v is not None else "-" for v in (a, b, c)]
            ratio = lambda x, y: f"{x / y:.2f}" if x is not None and y else "-"  # noqa: E731
            print(f"| {key} | {cells[0]} | {cells[1]} | {ratio(b, a)} | {cells[2]} | {ratio(c, b)} |")
        sizes = results.get("weights_mb", {}).get(label, {})
        if "w4a4" in sizes:
            print(f"| model file MB | - | {sizes['bf16']:.0f} | - | {sizes['w4a4']:.0f} | "
                  f"{sizes['w4a4'] / sizes['bf16']:.2f} |")


if __name__ == "__main__":
    main()
