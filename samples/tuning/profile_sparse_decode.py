"""Where a lowered sparse decode step spends its GPU time, against the dense one (7B shape, bf16, batch 1).

    python samples/tuning/profile_sparse_decode.py --work /tmp/planforge_bench_gpu [--layers 8] [--parts-only]

Builds what samples/bench_gpu.py builds (the bf16 export, and its 50% sparse form with a random
predictor of the default size), runs 8 eager decode steps of each lowered graph after a 1k context
under torch.profiler (kernel times are those of a CUDA-graph replay, without its launch savings),
and prints the CUDA kernels by total time. Then times the three launches of SparseHeadsAttention v3
alone (triton.testing.do_bench, median) at the benchmark's shape: 16 of 32 heads, d=4096, ctx=1024.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_gpu  # noqa: E402  (the same models)


def profile_decode(lowered: Path, label: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    from planforge.runtime import open_backend

    backend = open_backend(lowered, "torch", device="cuda", cuda_graphs=False)
    ids = np.random.default_rng(0).integers(1, 32000, (1, 1024))
    _, cache = backend.forward(ids, np.ones((1, 1024), np.int64), np.arange(1024)[None], backend.empty_cache(1))

    def steps(cache, n):
        for t in range(n):
            _, cache = backend.forward(ids[:, -1:], np.ones((1, cache.length + 1), np.int64), np.array([[1024 + t]]),
                                       cache)
        return cache

    cache = steps(cache, 2)  # warm-up: compilation
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        cache = steps(cache, 8)
        torch.cuda.synchronize()
    print(f"\n== {label}: CUDA kernels over 8 decode steps", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=70))


def sparse_heads_parts() -> None:
    import triton
    from triton.testing import do_bench

    from planforge.plugins.fused_attention import kernel as attn_kernel
    from planforge.plugins.kv_cache_update import rotary_cos_sin
    from planforge.plugins.sparse_heads import kernel as K

    d, H, D, C, ctx = 4096, 32, 128, 4096, 1024
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x, w_q, w_o = torch.randn(1, d, **bf), torch.randn(H * D, d, **bf) * d**-0.5, torch.randn(H * D, d, **bf) * 0.02
    kc, vc = torch.randn(1, 8, C, D, **bf), torch.randn(1, 8, C, D, **bf)
    lens = torch.tensor([ctx + 1], device="cuda", dtype=torch.int32)
    cos, sin = (t[:, 0].contiguous() for t in rotary_cos_sin(lens - 1, 1, D))
    heads = torch.randperm(H, device="cuda")[: H // 2].to(torch.int32)[None].contiguous()
    h = heads.shape[1]
    qbuf, part = torch.empty(1, h, D, **bf), torch.empty(1, h, d, device="cuda", dtype=torch.float32)
    kv = (heads // 4).to(torch.int32).contiguous()
    us = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3  # noqa: E731
    parts = {
        "whole op": lambda: K.sparse_heads_decode(x, w_q, w_o, kc, vc, lens, heads, None, cos, sin),
        "q_kernel": lambda: K.q_kernel[(h, D // 2 // 8)](x, w_q, x, cos, sin, heads, qbuf, d, h, HAS_BIAS=False,
                                                         ROTARY=True, HALF=D // 2, RH=8, BLOCK_D=1024, num_warps=4),
        "decode attention": lambda: attn_kernel.decode(qbuf, kc, vc, lens, 0.0, groups=kv),
        "oproj_kernel": lambda: K.oproj_kernel[(triton.cdiv(d, 256), h)](qbuf, w_o, heads, part, d, h, D=D,
                                                                          BLOCK_O=256, num_warps=8),
        "per-head sum": lambda: part.sum(1).to(torch.bfloat16),
        "dense q GEMV (cuBLAS)": lambda: torch.nn.functional.linear(x, w_q),
        "dense o GEMV (cuBLAS)": lambda: torch.nn.functional.linear(qbuf.new_zeros(1, H * D), w_o.T),
    }
    print("\n== SparseHeadsAttention v3 parts, 16 of 32 heads, d=4096, ctx=1024 (us, median)")
    for name, fn in parts.items():
        print(f"| {name} | {us(fn):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/planforge_bench_gpu"))
    parser.add_argument("--layers", type=int, default=8, help="Layers of the 7B-shaped model (of 32).")
    parser.add_argument("--parts-only", action="store_true", help="Only time SparseHeadsAttention's launches.")
    args = parser.parse_args()
    if args.parts_only:
        return sparse_heads_parts()
    source = bench_gpu.make_llama_7b_shape(args.work / "llama7b_hf", args.layers)
    work = args.work / "llama-7b-shape"
    dense, sparse = bench_gpu.compile_model(source, work), bench_gpu.compile_sparse(source, work)
    profile_decode(dense, "dense bf16")
    profile_decode(sparse, "bf16 + 50% sparsity")
    sparse_heads_parts()


if __name__ == "__main__":
    main()
