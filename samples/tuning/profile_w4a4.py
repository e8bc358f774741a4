"""What limits W4A4 against bf16 on the torch backend: bytes moved, FLOPs and launch gaps, per kind of kernel.

    python samples/tuning/profile_w4a4.py --work /tmp/planforge_bench_gpu [--layers 8] [--out profile.json]

Builds what samples/bench_gpu.py builds (the 7B-shaped model's bf16 export lowered for torch, and its W4A4
form: RTN, INT8 down_proj, no outlier columns), then for each lowered graph:

- decode at batch 16 after a 1k context: the CUDA-graph step's wall time (median of 3 x 16 steps), and 8
  eager steps under torch.profiler for the kernels (a graph replays the same kernels, without the launches);
- prefill of 2048 tokens at batch 1 (eager, as the backend runs it): wall time and the kernels.

Kernels are grouped by what they are (linear GEMMs, the W4A4 activation quantizer, attention, the KV-cache
write, everything else). For each group it prints kernel time per step; for the linears also the weight
bytes they read (the lowered graph's linear weights) and the FLOPs they do, as TB/s and TFLOP/s; and for the
step, the GPU's busy time against the wall time (the rest is launch gaps and host work). The model
files are broken down too: the 4-bit part, the INT8 down_proj, the float token table and LM head.
``--dry-run`` runs the same code on the CPU with the shipped reference model (CPU ops stand in for
kernels; nothing it prints is a GPU number).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu  # noqa: E402  (the same models and sides)

GROUPS = (  # (group, substrings of kernel names), first match wins
    ("w4a4 quantizer", ("quantize",)),
    ("w4a4 GEMM", ("quik_", "unpack_kernel")),
    ("attention", ("prefill_kernel", "prefill_entry", "decode_split", "decode_combine", "decode_entry", "flash",
                   "fmha", "attention")),
    ("KV-cache write", ("kv_update",)),
    ("bf16 GEMM (cuBLAS)", ("gemm", "nvjet", "cutlass", "xmma", "gemv", "sm90_", "addmm", "aten::mm", "matmul")),
)
LINEAR_OPS = {"MatMul", "Gemm", "QuikMatMul"}
DECODE_BATCH, CONTEXT, PREFILL = 16, 1024, 2048


def group_of(kernel: str) -> str:
    name = kernel.lower()
    return next((group for group, keys in GROUPS if any(k in name for k in keys)), "other")


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time at least one kernel ran."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _nbytes(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _bits(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "bits")


def weight_breakdown(model: onnx.ModelProto) -> dict[str, float]:
    """MB of the lowered graph's constant tensors, by what reads them."""
    size = {t.name: _nbytes(t) for t in model.graph.initializer}
    parts: dict[str, float] = {}
    for node in model.graph.node:
        for name in node.input:
            if name not in size:
                continue
            if node.op_type == "QuikMatMul":
                part = f"W4A4 linears ({_bits(node)}-bit)"
            elif node.op_type in LINEAR_OPS:
                part = "float linears"
            elif node.op_type == "Gather":
                part = "token table"
            else:
                part = "other"
            parts[part] = parts.get(part, 0.0) + size.pop(name) / 1e6
    parts["unread"] = sum(size.values()) / 1e6
    return parts


def linear_shapes(model: onnx.ModelProto) -> tuple[float, float]:
    """(MB of linear weights a step reads, Σ N·K over the linears): a step over T tokens does 2·T·Σ N·K FLOPs."""
    inits = {t.name: t for t in model.graph.initializer}
    mb = nk = 0.0
    for node in model.graph.node:
        weights = [inits[n] for n in node.input if n in inits]
        if node.op_type not in LINEAR_OPS or not weights:
            continue
        mb += sum(_nbytes(t) for t in weights) / 1e6
        w = weights[0]  # MatMul: (K, N); QuikMatMul: packed codes (N, K·bits/8), outliers are 0 columns here
        n, k = (w.dims[0], w.dims[1] * 8 // _bits(node)) if node.op_type == "QuikMatMul" else (w.dims[-1], w.dims[-2])
        nk += n * k
    return mb, nk


def kernels(prof, activity_cuda: bool) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every kernel (CPU ops in a dry run) the profiler saw."""
    device = torch.autograd.DeviceType.CUDA if activity_cuda else torch.autograd.DeviceType.CPU
    out = []
    for event in prof.events():
        if event.device_type != device:
            continue
        if not activity_cuda and (event.cpu_parent is not None or not event.name.startswith(("aten::", "planforge::"))):
            continue  # dry run: top-level ops only, so nothing is counted twice
        out.append((event.name, event.time_range.start, event.time_range.end))
    return out


def summarize(events: list, steps: int, wall_ms: float, linear_mb: float, linear_gflop: float) -> dict:
    by_group: dict[str, float] = {}
    for name, start, end in events:
        by_group[group_of(name)] = by_group.get(group_of(name), 0.0) + (end - start) / steps
    busy = busy_us([(s, e) for _, s, e in events]) / steps
    gemm_us = by_group.get("w4a4 GEMM", 0.0) + by_group.get("bf16 GEMM (cuBLAS)", 0.0)
    return {"wall_ms": wall_ms, "kernel_busy_ms": busy / 1e3, "busy_fraction": busy / 1e3 / wall_ms,
            "launches": len(events) / steps, "by_group_us": by_group, "linear_weights_mb": linear_mb,
            "linear_gflop": linear_gflop, "linear_kernel_us": gemm_us,
            "linear_tb_per_s": linear_mb / gemm_us if gemm_us else float("nan"),  # MB / µs = TB/s
            "linear_tflop_per_s": linear_gflop / gemm_us * 1e3 if gemm_us else float("nan")}


def profile_model(lowered: Path, name: str, vocab: int, device: str, context: int, prefill: int,
                  host_table: bool = False) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from planforge.runtime import open_backend
    from planforge.runtime.backends.torch import InPlaceKVCache

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    rng = np.random.default_rng(0)
    model = onnx.load(str(lowered / "model.onnx"), load_external_data=False)
    result = {"name": name, "weights_mb": weight_breakdown(model), "context": context, "prefill_tokens": prefill}
    linear_mb, linear_nk = linear_shapes(model)
    gflop = lambda tokens: 2.0 * tokens * linear_nk / 1e9  # noqa: E731

    # decode: wall time from the CUDA-graph step (what bench_gpu.py times), kernels from eager steps
    ids = rng.integers(1, vocab, (DECODE_BATCH, context))
    walls = []
    if cuda:
        side = bench_gpu.PlanforgeSide(lowered, name)
        for _ in range(3):
            cache = side.prefill(ids)
            sync()
            start = time.perf_counter()
            side.decode(cache, ids, 16)
            sync()
            walls.append((time.perf_counter() - start) / 16 * 1e3)
        del side
    eager = open_backend(lowered, "torch", device=device, cuda_graphs=False)
    _, cache = eager.forward(ids, np.ones(ids.shape, np.int64), np.tile(np.arange(context), (DECODE_BATCH, 1)),
                             eager.empty_cache(DECODE_BATCH), last_only=True)

    def steps(cache, n, first):
        for t in range(n):
            mask = np.ones((DECODE_BATCH, context + first + t + 1), np.int64)
            _, cache = eager.forward(ids[:, -1:], mask, np.full((DECODE_BATCH, 1), context + first + t), cache)
        return cache

    cache = steps(cache, 2, 0)  # compilation and autotuning
    sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        cache = steps(cache, 8, 2)
        sync()
    eager_ms = (time.perf_counter() - start) / 8 * 1e3
    result["decode"] = summarize(kernels(prof, cuda), 8, statistics.median(walls) if walls else eager_ms, linear_mb,
                                 gflop(DECODE_BATCH))
    result["decode"]["eager_wall_ms"] = eager_ms
    del cache

    # prefill: the backend's eager forward from an empty cache
    ids = rng.integers(1, vocab, (1, prefill))

    def run_prefill():
        empty = InPlaceKVCache(eager.empty_cache(1).buffers, np.zeros(1, np.int64), 0)
        eager.forward(ids, np.ones(ids.shape, np.int64), np.arange(prefill)[None], empty, last_only=True)
        sync()

    run_prefill()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run_prefill()
        times.append((time.perf_counter() - start) * 1e3)
    with profile(activities=activities) as prof:
        run_prefill()
    result["prefill"] = summarize(kernels(prof, cuda), 1, statistics.median(times), linear_mb, gflop(prefill))
    if host_table:  # where the host's time goes in one prefill: the ops by CPU time, with their launches
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            run_prefill()
        print(f"\n== {name}: host time of one {prefill}-token prefill, by op", flush=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    return result


def print_tables(results: list[dict]) -> None:
    context, prefill = results[0]["context"], results[0]["prefill_tokens"]
    for phase, label in (("decode", f"decode, batch {DECODE_BATCH}, context {context}, per step"),
                         ("prefill", f"prefill, {prefill} tokens")):
        rows = [r[phase] for r in results]
        print(f"\n{label} | " + " | ".join(r["name"] for r in results))
        print("|---|" + "---|" * len(results))
        lines = [("wall ms", "wall_ms", "{:.2f}"), ("GPU busy ms", "kernel_busy_ms", "{:.2f}"),
                 ("busy / wall", "busy_fraction", "{:.0%}"), ("kernels", "launches", "{:.0f}"),
                 ("linear weights read, MB", "linear_weights_mb", "{:.0f}"),
                 ("linear kernels, µs", "linear_kernel_us", "{:.0f}"),
                 ("linears: weight TB/s", "linear_tb_per_s", "{:.2f}"),
                 ("linears: TFLOP/s", "linear_tflop_per_s", "{:.0f}")]
        for title, key, fmt in lines:
            print(f"| {title} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
        groups = sorted({g for r in rows for g in r["by_group_us"]})
        for g in groups:
            print(f"| {g}, µs | " + " | ".join(f"{r['by_group_us'].get(g, 0.0):.0f}" for r in rows) + " |")
    print("\nmodel file, MB | " + " | ".join(r["name"] for r in results))
    print("|---|" + "---|" * len(results))
    parts = sorted({p for r in results for p in r["weights_mb"]})
    for p in parts:
        print(f"| {p} | " + " | ".join(f"{r['weights_mb'].get(p, 0.0):.0f}" for r in results) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planforge_bench_gpu"), help="where models are built")
    parser.add_argument("--layers", type=int, default=8, help="layers of the 7B-shaped model (of 32)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--host-table", action="store_true",
                        help="also print each prefill's host time by op (torch.profiler CPU table)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the reference model on the CPU, short context: checks the script, measures nothing")
    args = parser.parse_args()
    if args.dry_run:
        source, vocab, device, context, prefill = bench_gpu.REFERENCE, 8192, "cpu", 32, 64
        work = args.work / "reference-dry-run"
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (or --dry-run)")
        source = bench_gpu.make_llama_7b_shape(args.work / "llama7b_hf", args.layers)
        vocab, device, context, prefill, work = 32000, "cuda", CONTEXT, PREFILL, args.work / "llama-7b-shape"
    bf16, w4a4 = bench_gpu.compile_model(source, work), bench_gpu.compile_w4a4(source, work)
    results = [profile_model(bf16, "planforge bf16", vocab, device, context, prefill, args.host_table),
               profile_model(w4a4, "planforge W4A4", vocab, device, context, prefill, args.host_table)]
    print(f"\n{torch.cuda.get_device_name() if device == 'cuda' else 'CPU dry run'}, torch {torch.__version__}; "
          f"command: python samples/tuning/profile_w4a4.py {' '.join(sys.argv[1:])}")
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
