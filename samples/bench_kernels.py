"""Benchmarks the plugin kernels against what users would otherwise run, on one GPU, in one run.

    python samples/bench_kernels.py [--out results.json] [--quick]

Baselines are measured in the same run: cuBLAS through torch (BF16 GEMM), torch SDPA with
each backend (cuDNN, FlashAttention, memory-efficient), and a device-to-device copy. Times
are medians of ``triton.testing.do_bench`` (L2 flushed before each repetition). The last
thing printed is the ratio table that docs/kernels.md holds.

``--cuda-graphs`` captures every timed call, ours and the baseline alike, in a CUDA graph and
times its replay: GPU time without Python's per-launch cost (Triton's launcher costs tens of
microseconds per kernel in eager mode), which is how a TensorRT plugin's enqueue runs them.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import traceback
import warnings

import torch

warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains every backend it skips

ROWS: list[dict] = []
CUDA_GRAPHS = False  # set by --cuda-graphs


def _graphed(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream, as torch requires); returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compiles / autotunes outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _median_us(fn, reps_ms: int = 200) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=reps_ms, return_mode="median") * 1e3


def bench(fn, reps_ms: int = 200) -> float:
    """Median time of fn in microseconds (of its CUDA-graph replay with --cuda-graphs)."""
    return _median_us(_graphed(fn) if CUDA_GRAPHS else fn, reps_ms)


def row(op, case, ours_us, base_name, base_us, target, metric=""):
    ratio = base_us / ours_us
    ROWS.append(dict(op=op, case=case, ours_us=ours_us, baseline=base_name, base_us=base_us,
                     ratio=ratio, target=target, met=ratio >= target, metric=metric))
    print(f"  {op:16s} {case:38s} ours {ours_us:9.1f} us  {base_name} {base_us:9.1f} us  x{ratio:5.2f} "
          f"(target >= {target}) {metric}", flush=True)


def section(fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        print(f"== {fn.__name__}", flush=True)
        try:
            fn(*a, **k)
        except Exception:  # noqa: BLE001 - one failing section must not hide the others
            traceback.print_exc()
            ROWS.append(dict(op=fn.__name__, case="FAILED", ours_us=math.nan, baseline="", base_us=math.nan,
                             ratio=math.nan, target=0, met=False, metric="see log"))
    return wrapped


@section
def w4a4(quick: bool):
    from planforge.plugins.w4a4_gemm import kernel, outlier_permutation, quantize_weights

    shapes = [(4096, 4096), (11008, 4096), (4096, 11008)]
    ms = [1, 16, 2048] if quick else [1, 16, 2048, 8192]
    for n, k in shapes:
        g = torch.Generator(device="cuda").manual_seed(n + k)
        w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        calib = torch.rand(k, device="cuda", generator=g)
        variants = [(4, "int8"), (4, "fp8")] + ([(8, "int8")] if k == 11008 else [])
        for bits, compute in variants:
            W = quantize_weights(w, outlier_permutation(calib, 256), 256, bits)
            for m in ms:
                x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
                t_ref = bench(lambda: torch.nn.functional.linear(x, w))
                t = bench(lambda: kernel.linear(x, W, compute))
                target = 3.0 if m <= 16 else 1.5
                ops = 2 * m * n * k
                note = f"{ops / t / 1e6:.0f} TOP/s"
                if m > 16 and compute == "int8":  # the compute bound: cuBLAS's own INT8 GEMM, no quantization
                    xi = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
                    wi = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
                    note += f"; cuBLAS INT8 GEMM alone {ops / bench(lambda: torch._int_mm(xi, wi.T)) / 1e6:.0f}"
                row("w4a4_gemm" if bits == 4 else "w8a8_gemm", f"M={m} N={n} K={k} {compute}", t,
                    "cuBLAS-bf16", t_ref, target, note)


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def _sdpa_times(q, k, v, causal):
    """Median time of each SDPA backend that runs these inputs (GQA natively, else expanded K/V)."""
    from torch.nn.attention import sdpa_kernel

    times = {}
    g = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    for name, backend in _sdpa_backends().items():
        for kk, vv, kw in ((k, v, dict(enable_gqa=True)), (ke, ve, {})):
            try:
                with sdpa_kernel(backend):
                    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=causal, **kw)  # noqa: E731
                    fn()
                    times[name] = bench(fn)
                break
            except RuntimeError:
                continue
    return times


@section
def attention_decode(quick: bool):
    from planforge.plugins.fused_attention import kernel

    for B, hq, hkv, ctx, target in [(16, 32, 8, 4096, 1.0), (1, 32, 8, 32768, 1.5)]:
        D = 128
        q = torch.randn(B, hq, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, hkv, ctx, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
        t = bench(lambda: kernel.decode(q, k, v, lens))
        base = _sdpa_times(q[:, :, None], k, v, causal=False)
        print(f"  SDPA decode B={B} ctx={ctx}: " + ", ".join(f"{n} {x:.1f} us" for n, x in base.items()))
        name, t_ref = min(base.items(), key=lambda kv: kv[1])
        gbytes = 2 * k.numel() * k.element_size()
        row("attn_decode", f"B={B} Hq={hq} Hkv={hkv} ctx={ctx} D={D}", t, f"sdpa-{name}", t_ref, target,
            f"{gbytes / t / 1e3:.0f} GB/s eff")


@section
def attention_prefill(quick: bool):
    from planforge.plugins.fused_attention import kernel

    B, H, S, D = 1, 32, 4096, 128
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    t = bench(lambda: kernel.prefill(q, k, v))
    base = _sdpa_times(q, k, v, causal=True)
    flops = 4 * B * H * S * S * D / 2
    for name, target in (("cudnn", 0.85), ("flash", 1.5)):
        if name in base:
            row("attn_prefill", f"causal B={B} H={H} S={S} D={D}", t, f"sdpa-{name}", base[name], target,
                f"{flops / t / 1e6:.0f} vs {flops / base[name] / 1e6:.0f} TFLOP/s")
    per_tok = {}
    for s in (4096, 8192) if quick else (4096, 8192, 16384):
        q, k, v = (torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        per_tok[s] = bench(lambda: kernel.prefill(q, k, v, 0.0, 1024, 4)) / s
    s0, s1 = min(per_tok), max(per_tok)
    print("  window 1024 + 4 sinks, us/token: " + ", ".join(f"S={s}: {x * 1e3:.2f} ns" for s, x in per_tok.items()))
    row("attn_prefill", f"window1024+4sinks per-token S={s1} vs S={s0}", per_tok[s1], f"S={s0}", per_tok[s0], 0.9,
        "flat = ratio ~1")


@section
def kv_cache_update(quick: bool):
    from planforge.plugins.kv_cache_update import kernel

    B, H, C, S, D = 8, 8, 8192, 4096, 128
    kc, vc = (torch.randn(B, H, C, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kn, vn = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    pos = torch.randint(0, C - S, (B,), device="cuda", dtype=torch.int32)
    src = torch.randn(2 * B * H * S * D, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t_copy = bench(lambda: dst.copy_(src))
    moved = 2 * src.numel() * src.element_size()  # read + write
    for rolling in (False, True):
        t = bench(lambda: kernel.kv_cache_update(kc, vc, kn, vn, pos, None, None, rolling, 4))
        row("kv_cache_update", f"B={B} H={H} S={S} D={D} {'rolling' if rolling else 'linear'}", t,
            "d2d-copy(same bytes)", t_copy, 0.8, f"{moved / t / 1e3:.0f} vs {moved / t_copy / 1e3:.0f} GB/s")
    cos, sin = (torch.randn(B, S, D // 2, device="cuda") for _ in range(2))
    t = bench(lambda: kernel.kv_cache_update(kc, vc, kn, vn, pos, cos, sin, False, 0))
    row("kv_cache_update", f"B={B} H={H} S={S} D={D} +rotary", t, "d2d-copy(same bytes)", t_copy, 0.8,
        f"{moved / t / 1e3:.0f} GB/s (+cos/sin reads)")


def graph_us(fn, n: int = 20) -> float:
    """GPU time of fn without the Python launch cost: n calls captured in a CUDA graph (warm L2)."""
    fn()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    return _median_us(g.replay) / n


@section
def w4a4_breakdown(quick: bool):
    """Where the small-M time goes (printed, not rated): activation quantization vs the GEMM,
    and GPU time alone (CUDA graph) against the launch-bound eager time."""
    from planforge.plugins.w4a4_gemm import kernel, outlier_permutation, quantize_weights

    n, k = 4096, 4096
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    W = quantize_weights(w, outlier_permutation(torch.rand(k, device="cuda"), 256), 256, 4)
    weight_bytes = W.packed.numel() + 2 * W.outliers.numel()
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        xq, sx, zx, xo = kernel.quantize(x, W.perm, 256, 4)
        q = lambda: kernel.quantize(x, W.perm, 256, 4)  # noqa: E731
        mm = lambda: kernel.matmul(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4)  # noqa: E731
        lin = lambda: kernel.linear(x, W)  # noqa: E731
        two = lambda: kernel.matmul(*kernel.quantize(x, W.perm, 256, 4), W.packed, W.scale, W.wsum, W.outliers, 4)  # noqa: E731
        ref = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
        print(f"  M={m}: eager (L2 flushed) quantize {bench(q):.1f} us, matmul {bench(mm):.1f} us, linear {bench(lin):.1f} us,"
              f" two ops {bench(two):.1f} us | GPU only (graph) linear {graph_us(lin):.1f} us, two ops {graph_us(two):.1f} us,"
              f" cuBLAS {graph_us(ref):.1f} us | weights {weight_bytes / 1e6:.1f} MB", flush=True)


@section
def sparse_mlp(quick: bool):
    from planforge.plugins.sparse_mlp import kernel

    d, F = 4096, 11008
    x = torch.randn(1, d, device="cuda", dtype=torch.bfloat16)
    wg, wu, wd_t = ((torch.randn(F, d, device="cuda") * d**-0.5).to(torch.bfloat16) for _ in range(3))
    wd = wd_t.T.contiguous()  # (d, F) as in Hugging Face
    neurons = torch.randperm(F, device="cuda")[: F // 2].to(torch.int32)[None]
    dense = lambda: torch.nn.functional.linear(  # noqa: E731
        torch.nn.functional.silu(torch.nn.functional.linear(x, wg)) * torch.nn.functional.linear(x, wu), wd)
    t_ref = bench(dense)
    t = bench(lambda: kernel.sparse_mlp(x, wg, wu, wd_t, neurons))
    moved = 3 * (F // 2) * d * 2
    row("sparse_mlp", f"50% of F={F}, d={d}, B=1 decode", t, "dense MLP (cuBLAS)", t_ref, 1.7,
        f"{moved / t / 1e3:.0f} GB/s of selected weights")


@section
def sparse_heads(quick: bool):
    from planforge.plugins.kv_cache_update import rotary_cos_sin
    from planforge.plugins.sparse_heads import kernel

    d, H, D, C, ctx = 4096, 32, 128, 4096, 1024
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, d, **bf)
    w_q, w_k, w_v = ((torch.randn(H * D, d, device="cuda") * d**-0.5).to(torch.bfloat16) for _ in range(3))
    w_o = (torch.randn(d, H * D, device="cuda") * d**-0.5).to(torch.bfloat16)
    w_qkv = torch.cat([w_q, w_k, w_v])
    kc, vc = torch.randn(1, H, C, D, **bf), torch.randn(1, H, C, D, **bf)
    pos = torch.tensor([ctx], device="cuda", dtype=torch.int32)
    cos, sin = (t[:, 0] for t in rotary_cos_sin(pos, 1, D))
    fc, fs = torch.cat([cos, cos], -1).to(torch.bfloat16), torch.cat([sin, sin], -1).to(torch.bfloat16)

    def dense():
        q, k, v = torch.nn.functional.linear(x, w_qkv).view(1, 3, H, D).unbind(1)  # (1, H, D) each
        q = q * fc + torch.cat([-q[..., D // 2 :], q[..., : D // 2]], -1) * fs
        k = k * fc + torch.cat([-k[..., D // 2 :], k[..., : D // 2]], -1) * fs
        kc[:, :, ctx] = k
        vc[:, :, ctx] = v
        o = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kc[:, :, : ctx + 1], vc[:, :, : ctx + 1])
        return torch.nn.functional.linear(o.reshape(1, H * D), w_o)

    t_ref = bench(dense)
    w_kv, w_o_rows = torch.cat([w_k, w_v]), w_o.T.contiguous()  # the lowered graph's layouts
    heads = torch.randperm(H, device="cuda")[: H // 2].to(torch.int32)[None]
    lens = pos + 1

    def sparse():  # what a lowered sparse layer runs: every KV head projected and written, then the op (v3)
        k, v = torch.nn.functional.linear(x, w_kv).view(1, 2, H, D).unbind(1)
        kc[:, :, ctx] = k * fc + torch.cat([-k[..., D // 2 :], k[..., : D // 2]], -1) * fs
        vc[:, :, ctx] = v
        return kernel.sparse_heads_decode(x, w_q, w_o_rows, kc, vc, lens, heads, None, cos, sin)

    t = bench(sparse)
    row("sparse_heads", f"50% of {H} heads, d={d}, ctx={ctx}, B=1 (+ dense K/V)", t, "dense attn+proj (cuBLAS+SDPA)",
        t_ref, 1.6)


SECTIONS = [w4a4, w4a4_breakdown, attention_decode, attention_prefill, kv_cache_update, sparse_mlp, sparse_heads]


def print_table():
    print("\n| op | case | ours (us) | baseline | baseline (us) | ratio | target | met | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['op']} | {r['case']} | {r['ours_us']:.1f} | {r['baseline']} | {r['base_us']:.1f} | "
              f"{r['ratio']:.2f}x | >= {r['target']} | {'yes' if r['met'] else 'NO'} | {r['metric']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="fewer sizes")
    p.add_argument("--only", nargs="*", help="section names to run")
    p.add_argument("--cuda-graphs", action="store_true", help="time CUDA-graph replays of ours and the baselines")
    args = p.parse_args(argv)
    global CUDA_GRAPHS
    CUDA_GRAPHS = args.cuda_graphs
    if not torch.cuda.is_available():
        print("bench_kernels needs a CUDA GPU (run it on the device machine)", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{'CUDA-graph replays' if CUDA_GRAPHS else 'eager launches'}", flush=True)
    for s in SECTIONS:
        if not args.only or s.__wrapped__.__name__ in args.only:
            s(args.quick)
    print_table()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(ROWS, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
