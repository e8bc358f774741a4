"""Tile sweep of the sparse_mlp Triton kernel on a GPU (d=4096, F=11008, 50% of neurons, B=1).

    python samples/tuning/sweep_sparse_mlp.py

Times every (BLOCK_J, BLOCK_D, num_warps, num_stages) with triton.testing.do_bench (L2 flushed), checks
each against the shipped kernel's output, and prints the dense cuBLAS MLP time of the same run.
The shipped tile (plugins/sparse_mlp/kernel.py) came from this sweep (docs/kernels.md).
"""
import itertools
import sys
import time
import torch
import triton
from triton.testing import do_bench
from planforge.plugins.sparse_mlp import kernel as K
from planforge.plugins.sparse_mlp import reference as R
torch.backends.cuda.matmul.allow_tf32 = False
d, F = 4096, 11008
x = torch.randn(1, d, device="cuda", dtype=torch.bfloat16)
wg, wu, wd_t = ((torch.randn(F, d, device="cuda") * d**-0.5).to(torch.bfloat16) for _ in range(3))
wd = wd_t.T.contiguous()
neurons = torch.randperm(F, device="cuda")[: F // 2].to(torch.int32)[None]
dense = lambda: torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(x, wg)) * torch.nn.functional.linear(x, wu), wd)
b = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
t_dense = b(dense)
ref = K.sparse_mlp(x, wg, wu, wd_t, neurons).float()
print("dense", t_dense, "current", b(lambda: K.sparse_mlp(x, wg, wu, wd_t, neurons)), flush=True)
k = neurons.shape[1]
res = []
for bj, bd, w, st in itertools.product([8, 16, 32, 64], [256, 512, 1024], [4, 8], [1, 2, 3]):
    def run():
        y = torch.zeros((1, d), dtype=torch.float32, device="cuda")
        K.sparse_mlp_kernel[(triton.cdiv(k, bj), 1)](x, wg, wu, wd_t, neurons, y, d, k, x.stride(0), neurons.stride(0), y.stride(0), BLOCK_J=bj, BLOCK_D=bd, num_warps=w, num_stages=st)
        return y
    try:
        err = (run() - ref).abs().max().item()
        t = b(run)
    except Exception as e:
        print("fail", bj, bd, w, st, type(e).__name__, flush=True); continue
    res.append((t, bj, bd, w, st, err))
    print(f"{bj:3d} {bd:5d} {w} {st} {t:7.1f} us  ratio {t_dense / t:.2f}  err {err:.1e}", flush=True)
res.sort()
print("best", res[:5], "dense", t_dense)
