"""Tile sweeps of the W4A4 GEMM kernels on a GPU, Llama-2-7B shapes, timed in CUDA graphs (warm L2).

    python samples/tuning/sweep_w4a4.py gemv     # M = 1 GEMV fed by QuikQuantize
    python samples/tuning/sweep_w4a4.py fused    # M = 1 GEMV quantizing in place (kernel.linear)
    python samples/tuning/sweep_w4a4.py fusedcold  # the same, timed with L2 flushed
    python samples/tuning/sweep_w4a4.py m16      # M = 16 tensor-core kernel
    python samples/tuning/sweep_w4a4.py split    # M = 16 with K split across programs, tokens as MMA rows or columns
    python samples/tuning/sweep_w4a4.py swap     # M = 16, around the best swapped tile
    python samples/tuning/sweep_w4a4.py split1   # M = 1 as two ops: QuikQuantize + the split-K kernel
    python samples/tuning/sweep_w4a4.py large    # M = 4096: TMA GEMM on codes unpacked once per call

Prints cuBLAS BF16 and the shipped kernel.linear per shape, then every tile's time and its error
relative to kernel.linear's output, and the six best tiles; stops starting new tiles after
BUDGET_S seconds (second argument, default 420). ``split``, ``split1``, ``swap``, ``large`` and ``fusedcold`` time as
``bench_kernels.py --cuda-graphs`` does (CUDA-graph replay, L2 flushed); the others warm.
"""
import itertools
import os
import sys
import time
import torch
from triton.testing import do_bench_cudagraph
from planforge.plugins.w4a4_gemm import kernel as K, kernel_large_m as B, outlier_permutation, quantize_weights
which = sys.argv[1]
budget_s = float(sys.argv[2]) if len(sys.argv) > 2 else 420.0
if which in ("split", "split1", "swap", "large", "fusedcold"):  # the benchmark's own timing: graph replay, L2 flushed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from bench_kernels import _graphed, _median_us
    bg = lambda fn: _median_us(_graphed(fn), 100)
else:
    bg = lambda fn: do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
t_start = time.time()
shapes = [(4096, 4096), (11008, 4096), (4096, 11008)]
data = {}
for n, k in shapes:
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    calib = torch.rand(k, device="cuda", generator=g)
    W = quantize_weights(w, outlier_permutation(calib, 256), 256, 4)
    m = {"m16": 16, "split": 16, "swap": 16, "large": 4096}.get(which, 1)  # split1: M = 1
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    xq, sx, zx, xo = K.quantize(x, W.perm, W.n_outliers, W.bits)
    ref = K.linear(x, W).float()
    t_cublas = bg(lambda: torch.nn.functional.linear(x, w))
    t_cur = bg(lambda: K.linear(x, W))
    extra = ""
    if which == "large":
        shipped_large_m = K.LARGE_M
        xi = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
        wi = torch.randint(-8, 8, (k, n), device="cuda", dtype=torch.int8).T.contiguous().T
        extra = f" | cuBLAS int8 (torch._int_mm, no quantization) {bg(lambda: torch._int_mm(xi, wi)):.1f}"
        K.LARGE_M = 1 << 30
        t_old = bg(lambda: K.linear(x, W))
        ref = K.linear(x, W).float()  # the in-register unpacking kernel is the reference here
        K.LARGE_M = shipped_large_m
        extra += f" | in-register unpack {t_old:.1f}"
        xc = K.quantize(x, W.perm, W.n_outliers, 4, codes=torch.int8)[0]
        wc = B.unpack(W.packed, False)
        extra += f" | unpack W {bg(lambda: B.unpack(W.packed, False)):.1f}" \
                 f" quantize to codes {bg(lambda: K.quantize(x, W.perm, W.n_outliers, 4, codes=torch.int8)):.1f}"
        xq = xc
        xo = K.quantize(x, W.perm, W.n_outliers, 4)[3]
        data[(n, k)] = (w, W, x, xq, sx, zx, xo, ref, t_cublas, wc)
    else:
        data[(n, k)] = (w, W, x, xq, sx, zx, xo, ref, t_cublas, None)
    print(f"shape {n}x{k} M={m}: cublas {t_cublas:.1f} current linear {t_cur:.1f} ratio {t_cublas/t_cur:.2f}{extra}", flush=True)
res = {}
if which == "gemv":
    space = itertools.product([4, 8, 16, 32, 64], [128, 256, 512, 1024], [2, 4, 8], [2, 3, 4])
elif which in ("fused", "fusedcold"):
    space = itertools.product([8, 16, 32, 64], [256, 512, 1024], [4, 8], [2, 3])
elif which == "swap":  # around the best swapped tile of "split"
    space = itertools.product([32, 64], [64, 128], [2, 4, 8], [3, 5], [4, 8], [True])
elif which in ("split", "split1"):
    space = [c for c in itertools.product([16, 32, 64, 128], [128, 256], [4], [3, 4], [1, 2, 4, 8], [False, True])
             if c[5] or c[0] <= 64]
elif which == "large":
    space = [c for c in itertools.product([128, 256], [128, 256], [64, 128], [4, 8], [3, 4], [False, True])
             if not (c[0] == c[1] == 256) and (c[3] == 8 or c[0] == c[1] == 128)]
else:
    space = itertools.product([16, 32, 64, 128], [64, 128, 256, 512], [2, 4, 8], [2, 3, 4, 5])
for cfg in space:
    if time.time() - t_start > budget_s:
        print("time budget hit")
        break
    row = []
    try:
        for (n, k), (w, W, x, xq, sx, zx, xo, ref, t_cublas, wc) in data.items():
            if which == "large":
                fn = lambda: B.matmul_codes(xq, sx, zx, xo, wc, W.scale, W.wsum, W.outliers, config=cfg)
            elif which in ("split", "swap"):
                fn = lambda: K._small_m(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4, False,
                                        torch.empty((16, n), dtype=x.dtype, device="cuda"), config=cfg)
            elif which == "gemv":
                fn = lambda: K._gemv(None, None, xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4, x.dtype, config=cfg)
            elif which in ("fused", "fusedcold"):
                fn = lambda: K._gemv(x, W.perm, None, None, None, None, W.packed, W.scale, W.wsum, W.outliers, 4, x.dtype, config=cfg)
            elif which == "split1":
                def fn():
                    q = K.quantize(x, W.perm, W.n_outliers, 4)
                    return K._small_m(*q, W.packed, W.scale, W.wsum, W.outliers, 4, False,
                                      torch.empty((1, n), dtype=x.dtype, device="cuda"), config=cfg)
            else:
                fn = lambda: K._small_m(xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4, False,
                                        torch.empty((16, n), dtype=x.dtype, device="cuda"), config=cfg + (1, False))
            err = (fn().float() - ref).abs().max().item() / ref.abs().max().item()
            row.append((bg(fn), t_cublas, err))
    except Exception as e:
        print("fail", cfg, type(e).__name__, str(e)[:60], flush=True); continue
    res[cfg] = row
    print(cfg, " ".join(f"{t:.1f}us({c/t:.2f}x,e{e:.0e})" for t, c, e in row), flush=True)
best = sorted(res.items(), key=lambda kv: sum(t for t, _, _ in kv[1]))[:6]
print("BEST", which)
for cfg, row in best: print(cfg, " ".join(f"{t:.1f}us({c/t:.2f}x)" for t, c, e in row))
if which == "large":  # where the unpack-once path starts to pay: kernel.LARGE_M
    w, W = data[(4096, 4096)][:2]
    for m in (128, 256, 512, 1024, 2048):
        x = torch.randn(m, 4096, device="cuda").to(torch.bfloat16)
        times = []
        for large_m in (1 << 30, 1):
            K.LARGE_M = large_m
            times.append(bg(lambda: K.linear(x, W)))
        K.LARGE_M = shipped_large_m
        print(f"M={m} 4096x4096: in-register unpack {times[0]:.1f} us, codes + TMA {times[1]:.1f} us,"
              f" cuBLAS {bg(lambda: torch.nn.functional.linear(x, w)):.1f} us", flush=True)
