"""Tile sweep of the sparse_heads kernels (QKV GEMV and o_proj) on a GPU, bench_kernels.py's case.

    python samples/tuning/sweep_sparse_heads.py

Times the whole op with the shipped tiles, then each kernel alone over its tile space (the QKV
kernel's RH x BLOCK_D x warps, o_proj's BLOCK_O x warps) and the decode attention in between;
every variant is checked against the shipped tiles' output (docs/kernels.md).
"""
import itertools
import torch
import triton
from triton.testing import do_bench
from planforge.plugins.kv_cache_update import rotary_cos_sin
from planforge.plugins.sparse_heads import kernel as SK
from planforge.plugins.fused_attention import kernel as attn_kernel
b_ = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
d, H, D, C, ctx = 4096, 32, 128, 4096, 1024
bf = dict(device="cuda", dtype=torch.bfloat16)
x = torch.randn(1, d, **bf)
w_q, w_k, w_v = ((torch.randn(H * D, d, device="cuda") * d**-0.5).to(torch.bfloat16) for _ in range(3))
w_o = (torch.randn(d, H * D, device="cuda") * d**-0.5).to(torch.bfloat16)
kc, vc = torch.randn(1, H, C, D, **bf), torch.randn(1, H, C, D, **bf)
pos = torch.tensor([ctx], device="cuda", dtype=torch.int32)
cos, sin = (t[:, 0] for t in rotary_cos_sin(pos, 1, D))
groups = torch.randperm(H, device="cuda")[: H // 2].to(torch.int32)[None]
full = lambda: SK.sparse_heads_decode(x, w_q, w_k, w_v, w_o, cos, sin, kc, vc, pos, groups)
print("current total", b_(full), flush=True)
B = 1; Hkv = kc.shape[1]; G = w_q.shape[0] // (Hkv * D); h = groups.shape[1]
cosf, sinf = cos.float().contiguous(), sin.float().contiguous()
qbuf = torch.empty((B, h * G, D), **bf)
def qkv(rh, bd, w):
    SK.qkv_kernel[(B * h, G + 2, D // 2 // rh)](x, w_q, w_k, w_v, cosf, sinf, groups, pos, qbuf, kc, vc, d, h,
        *kc.stride()[:3], *vc.stride()[:3], G=G, HALF=D // 2, RH=rh, BLOCK_D=bd, num_warps=w)
print("G", G, "h", h)
qkv(32, 256, 4); ref_q = qbuf.clone()
print("qkv current", b_(lambda: qkv(32, 256, 4)), flush=True)
for rh, bd, w in itertools.product([4, 8, 16, 32], [256, 512, 1024], [2, 4, 8]):
    try:
        qkv(rh, bd, w); err = (qbuf.float() - ref_q.float()).abs().max().item()
        print(f"qkv rh {rh} bd {bd} w {w}: {b_(lambda: qkv(rh, bd, w)):.1f} us err {err:.1e}", flush=True)
    except Exception as e:
        print("qkv fail", rh, bd, w, type(e).__name__)
attn = attn_kernel.decode(qbuf, kc, vc, pos + 1, groups=groups)
print("attn decode", b_(lambda: attn_kernel.decode(qbuf, kc, vc, pos + 1, groups=groups)), flush=True)
y = torch.empty((B, d), **bf)
def op(bo, w):
    SK.oproj_kernel[(triton.cdiv(d, bo), B)](attn, w_o, groups, y, d, h, w_o.shape[1], G=G, D=D, BLOCK_O=bo, num_warps=w)
op(32, 4); ref_y = y.clone()
for bo, w in itertools.product([4, 8, 16, 32, 64], [1, 2, 4, 8]):
    try:
        op(bo, w); err = (y.float() - ref_y.float()).abs().max().item()
        print(f"oproj bo {bo} w {w}: {b_(lambda: op(bo, w)):.1f} us err {err:.1e}", flush=True)
    except Exception as e:
        print("oproj fail", bo, w, type(e).__name__)
