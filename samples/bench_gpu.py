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

``--sparse`` adds bf16 with 50% contextual sparsity (heads of layers >= 1 and MLP neurons; the
shipped predictor on the reference model, a random one of the default size on the 7B shape, whose
selections are as good as any for timing), lowered onto SparseHeadsAttention + SparseMLP.
``--streaming`` adds the 7B shape streaming with 4 sinks + a 2044-token window (2048 cache slots):
decode ms per token at stream positions 4k, 8k, 16k and 32k, batch 1, against transformers decoding
with the whole context in its cache. The streaming side reaches position p by setting its cache's
lengths to p after filling its 2048 slots: a step's work is the same at every p (fixed slots; p only
enters the rotary positions), so the stream is not replayed token by token.
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
SPARSE_NAME = "planforge torch backend bf16 + 50% sparsity (lowered, CUDA graphs)"
STREAM_NAME = "planforge torch backend bf16 streaming, 4 sinks + 2044 (lowered, CUDA graphs)"
STREAM_POSITIONS = (4096, 8192, 16384, 32768)
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


def compile_sparse(source: Path, work: Path) -> Path:
    """The bf16 export with 50% of heads (layers >= 1) and neurons skipped per token, lowered for torch."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.contextual_sparsity import SparsityOptions
    from planforge.manifest import Manifest
    from planforge.sparsity.predictor import Predictor, PredictorHeader, expected_shapes

    portable, sparse, lowered = work / "portable", work / "sparse", work / "sparse_lowered"
    predictor = source / "sparsity_predictor.safetensors"
    if not predictor.is_file():  # a random predictor of the default size (128 hidden units per scorer)
        predictor, d = work / "predictor.safetensors", Manifest.load(portable).dims
        header = PredictorHeader(kind="single", criterion="plainact", num_layers=d.num_layers, num_heads=d.num_heads,
                                 num_kv_heads=d.num_kv_heads, hidden_size=d.hidden_size,
                                 intermediate_size=d.intermediate_size, head_hidden=128, neuron_hidden=128)
        rng = np.random.default_rng(0)
        tensors = {k: (rng.standard_normal(shape) * 0.05).astype(np.float32) for k, shape in expected_shapes(header).items()}
        tensors = {k: np.abs(v) + 1.0 if k.endswith("input_std") else v for k, v in tensors.items()}
        Predictor(header, tensors).save(predictor)
    if not sparse.exists():
        optimize(portable, sparse, OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor), target="portable"))
    if not lowered.exists():
        optimize(sparse, lowered, OptimizeOptions(target="torch"))
    return lowered


def compile_streaming(work: Path) -> Path:
    """The bf16 export streaming with 4 sinks + a 2044-token window, lowered for torch."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.graph_passes.streaming_attention import StreamingOptions

    stream, lowered = work / "streaming", work / "streaming_lowered"
    if not stream.exists():
        optimize(work / "portable", stream, OptimizeOptions(streaming=StreamingOptions(4, 2044), target="portable"))
    if not lowered.exists():
        optimize(stream, lowered, OptimizeOptions(target="torch"))
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


class HFStaticSide(HFSide):
    """transformers' fastest offline decode: a StaticCache, and the decode step compiled with torch.compile
    ("reduce-overhead": CUDA graphs). The prefill runs eager into the same static cache."""

    name = "transformers bf16 (SDPA, static cache, torch.compile)"

    def __init__(self, source: Path, max_len: int):
        super().__init__(source)
        self.max_len = max_len
        self.step = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)
        self.caches: dict = {}

    def _cache(self, batch: int):
        from transformers import StaticCache

        if batch not in self.caches:
            self.caches = {}  # one batch size's cache at a time
            try:
                cache = StaticCache(config=self.model.config, max_batch_size=batch, max_cache_len=self.max_len,
                                    device="cuda", dtype=torch.bfloat16)
            except TypeError:  # newer transformers size the batch lazily
                cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
            self.caches[batch] = cache
        cache = self.caches[batch]
        cache.reset()
        return cache

    @torch.inference_mode()
    def prefill(self, ids: np.ndarray):
        cache = self._cache(ids.shape[0])
        out = self.model(torch.from_numpy(ids).cuda(), past_key_values=cache,
                         cache_position=torch.arange(ids.shape[1], device="cuda"), use_cache=True)
        out.logits[:, -1].float().cpu()
        return cache, ids.shape[1]

    @torch.inference_mode()
    def decode(self, state, ids: np.ndarray, steps: int):
        cache, length = state
        tokens = torch.from_numpy(ids[:, -1:]).cuda()
        for t in range(steps):
            out = self.step(tokens, past_key_values=cache, cache_position=torch.tensor([length + t], device="cuda"),
                            use_cache=True)
            out.logits[:, -1].float().cpu()


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


def measure_streaming(hf: "HFSide", stream: "PlanforgeSide", vocab: int, reps: int) -> dict:
    """Decode ms per token at each stream position, batch 1: transformers with the whole context cached, planforge
    streaming with its 2048 slots (lengths set to the position: see the module doc)."""
    from planforge.runtime.backends.torch import InPlaceKVCache

    rng = np.random.default_rng(1)
    slots = stream.backend.manifest.streaming["cache_slots"]
    filled = stream.prefill(rng.integers(1, vocab, (1, slots)))
    token = rng.integers(1, vocab, (1, 1))

    def stream_decode(position: int):
        cache = InPlaceKVCache(filled.buffers, np.array([position]), slots)
        for t in range(DECODE_STEPS):
            _, cache = stream.backend.forward(token, np.ones((1, slots + 1), np.int64), np.array([[position + t]]),
                                              cache)

    rows = {HFSide.name: {}, STREAM_NAME: {}}
    stream_decode(STREAM_POSITIONS[0])  # warm-up and graph capture
    for position in STREAM_POSITIONS:
        ids = rng.integers(1, vocab, (1, position))
        times = []
        for _ in range(reps):
            cache = hf.prefill(ids)
            times.append(_time(lambda: hf.decode(cache, ids, DECODE_STEPS), 1))
        cache = None
        torch.cuda.empty_cache()
        rows[HFSide.name][f"ms_per_token_pos{position}"] = statistics.median(times) / DECODE_STEPS * 1e3
        rows[STREAM_NAME][f"ms_per_token_pos{position}"] = \
            _time(lambda: stream_decode(position), reps) / DECODE_STEPS * 1e3
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planforge_bench_gpu"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=8, help="Layers of the 7B-shaped model (of 32).")
    parser.add_argument("--quick", action="store_true", help="1k context only, 2 repetitions.")
    parser.add_argument("--no-w4a4", action="store_true", help="Skip the W4A4 (QUIK) rows.")
    parser.add_argument("--sparse", action="store_true", help="Add bf16 with 50%% contextual sparsity.")
    parser.add_argument("--streaming", action="store_true",
                        help="Add the 7B shape streaming (4 sinks + 2044) at stream positions 4k to 32k.")
    parser.add_argument("--hf-static", action="store_true",
                        help="Add transformers with a static cache and its decode step under torch.compile.")
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
        sparse = compile_sparse(source, work) if args.sparse else None
        print(f"[{label}] exported and lowered in {time.time() - t0:.0f} s", flush=True)
        rows = {}
        sides = [lambda: HFSide(source), lambda: PlanforgeSide(lowered)]
        if args.hf_static:
            longest = max(contexts + [prefill_len]) + DECODE_STEPS + 8
            sides.insert(1, lambda: HFStaticSide(source, longest))
        if w4a4 is not None:
            sides.append(lambda: PlanforgeSide(w4a4, W4A4_NAME))
        if sparse is not None:
            sides.append(lambda: PlanforgeSide(sparse, SPARSE_NAME))
        for make in sides:
            side = make()
            rows[side.name] = measure(side, vocab, contexts, [1, 16], prefill_len, reps)
            print(f"[{label}] {side.name}: {json.dumps(rows[side.name])}", flush=True)
            del side
            torch.cuda.empty_cache()
        results["models"][label] = rows
        results.setdefault("weights_mb", {})[label] = {
            "bf16": model_file_bytes(lowered) / 1e6, **({"w4a4": model_file_bytes(w4a4) / 1e6} if w4a4 else {}),
            **({"sparse": model_file_bytes(sparse) / 1e6} if sparse else {})}
        if args.streaming and source != REFERENCE:  # the reference model has 256 positions
            hf, stream = HFSide(source), PlanforgeSide(compile_streaming(work), STREAM_NAME)
            results.setdefault("streaming", {})[label] = measure_streaming(hf, stream, vocab, reps)
            print(f"[{label}] streaming: {json.dumps(results['streaming'][label])}", flush=True)
            del hf, stream
            torch.cuda.empty_cache()
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
          "transformers bf16; W4A4 and sparse ratios = that row / planforge bf16")
    ratio = lambda x, y: f"{x / y:.2f}" if x is not None and y else "-"  # noqa: E731
    cell = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
    for label, rows in results["models"].items():
        hf, pf = rows[HFSide.name], rows[PlanforgeSide.name]
        q, sp = rows.get(W4A4_NAME, {}), rows.get(SPARSE_NAME, {})
        print(f"\n{label}\n| metric | transformers bf16 | planforge bf16 | bf16 ratio | planforge W4A4 | W4A4 ratio "
              "| bf16 + 50% sparse | sparse ratio |\n|---|---|---|---|---|---|---|---|")
        for key in hf:
            a, b, c, e = hf[key], pf.get(key), q.get(key), sp.get(key)
            print(f"| {key} | {cell(a)} | {cell(b)} | {ratio(b, a)} | {cell(c)} | {ratio(c, b)} | {cell(e)} "
                  f"| {ratio(e, b)} |")
        static = rows.get(HFStaticSide.name)
        if static:
            print(f"\n{label}: transformers with a static cache and torch.compile\n| metric | transformers eager "
                  "| transformers static + compile | static / eager | planforge bf16 / static |\n|---|---|---|---|---|")
            for key in hf:
                print(f"| {key} | {cell(hf[key])} | {cell(static.get(key))} | {ratio(static.get(key), hf[key])} "
                      f"| {ratio(pf.get(key), static.get(key))} |")
        sizes = results.get("weights_mb", {}).get(label, {})
        w, sz = sizes.get("w4a4"), sizes.get("sparse")
        print(f"| model file MB | - | {sizes['bf16']:.0f} | - | {cell(w)} | {ratio(w, sizes['bf16'])} | {cell(sz)} "
              f"| {ratio(sz, sizes['bf16'])} |")
    for label, rows in results.get("streaming", {}).items():
        hf, st = rows[HFSide.name], rows[STREAM_NAME]
        first = st[f"ms_per_token_pos{STREAM_POSITIONS[0]}"]
        print(f"\n{label}, decode ms per token at batch 1\n| stream position | transformers bf16 (whole context) "
              "| planforge streaming | streaming / its time at 4k |\n|---|---|---|---|")
        for key in hf:
            print(f"| {key.removeprefix('ms_per_token_pos')} | {hf[key]:.2f} | {st[key]:.2f} | {st[key] / first:.3f} |")


if __name__ == "__main__":
    main()
