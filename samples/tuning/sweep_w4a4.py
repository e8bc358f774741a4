"""Tile sweeps of the W4A4 GEMM kernels on a GPU, Llama-2-7B shapes, timed in CUDA graphs (warm L2).

    python samples/tuning/sweep_w4a4.py gemv     # M = 1 GEMV fed by QuikQuantize
    python samples/tuning/sweep_w4a4.py fused    # M = 1 GEMV quantizing in place (kernel.linear)
    python samples/tuning/sweep_w4a4.py m16      # M = 16 tensor-core kernel

Prints cuBLAS BF16 and the shipped kernel.linear per shape, then every tile's time and its error
relative to kernel.linear's output, and the six best tiles; stops starting new tiles after
BUDGET_S seconds (second argument, default 420).
"""
import itertools
import sys
import time
import torch
import triton
from triton.testing import do_bench_cudagraph
from planforge.plugins.w4a4_gemm import kernel as K, outlier_permutation, quantize_weights
which = sys.argv[1]
budget_s = float(sys.argv[2]) if len(sys.argv) > 2 else 420.0
bg = lambda fn: do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
t_start = time.time()
shapes = [(4096, 4096), (11008, 4096), (4096, 11008)]
data = {}
for n, k in shapes:
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    calib = torch.rand(k, device="cuda", generator=g)
    W = quantize_weights(w, outlier_permutation(calib, 256), 256, 4)
    m = 1 if which != "m16" else 16
    x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    xq, sx, zx, xo = K.quantize(x, W.perm, W.n_outliers, W.bits)
    ref = K.linear(x, W).float()
    t_cublas = bg(lambda: torch.nn.functional.linear(x, w))
    t_cur = bg(lambda: K.linear(x, W))
    data[(n, k)] = (w, W, x, xq, sx, zx, xo, ref, t_cublas)
    print(f"shape {n}x{k} M={m}: cublas {t_cublas:.1f} current linear {t_cur:.1f} ratio {t_cublas/t_cur:.2f}", flush=True)
res = {}
if which == "gemv":
    space = itertools.product([4, 8, 16, 32, 64], [128, 256, 512, 1024], [2, 4, 8], [2, 3, 4])
elif which == "fused":
    space = itertools.product([8, 16, 32, 64], [256, 512, 1024], [4, 8], [2, 3])
else:
    space = itertools.product([16, 32, 64, 128], [64, 128, 256, 512], [2, 4, 8], [2, 3, 4, 5])
for cfg in space:
    if time.time() - t_start > budget_s:
        print("time budget hit")
        break
    row = []
    try:
        for (n, k), (w, W, x, xq, sx, zx, xo, ref, t_cublas) in data.items():
            if which == "gemv":
                fn = lambda: K._gemv(None, None, xq, sx, zx, xo, W.packed, W.scale, W.wsum, W.outliers, 4, x.dtype, config=cfg)
            elif which == "fused":
                fn = lambda: K._gemv(x, W.perm, None, None, None, None, W.packed, W.scale, W.wsum, W.outliers, 4, x.dtype, config=cfg)
            else:
                bn, bk, wp, st = cfg
                def fn():
                    y = torch.empty((16, n), dtype=x.dtype, device="cuda")
                    K.quik_gemm_kernel.fn[(triton.cdiv(n, bn),)](xq, W.packed, sx, zx, W.scale, W.wsum, xo, W.outliers, y, 16, n, xq.shape[1], xo.shape[1], 16,
                        xq.stride(0), W.packed.stride(0), xo.stride(0), W.outliers.stride(0), y.stride(0),
                        BITS=4, USE_FP8=False, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, num_warps=wp, num_stages=st)
                    return y
            err = (fn().float() - ref).abs().max().item() / ref.abs().max().item()
            row.append((bg(fn), t_cublas, err))
    except Exception as e:
        print("fail", cfg, type(e).__name__, str(e)[:60], flush=True); continue
    res[cfg] = row
    print(cfg, " ".join(f"{t:.1f}us({c/t:.2f}x,e{e:.0e})" for t, c, e in row), flush=True)
best = sorted(res.items(), key=lambda kv: sum(t for t, _, _ in kv[1]))[:6]
print("BEST", which)
for cfg, row in best: print(cfg, " ".join(f"{t:.1f}us({c/t:.2f}x)" for t, c, e in row))
