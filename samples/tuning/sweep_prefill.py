"""Config sweep of the fused_attention prefill kernel on a GPU (causal, B1 H32 S4096 D128 bf16).

    python samples/tuning/sweep_prefill.py

Times every (BLOCK_M, BLOCK_N, warps, stages) of the existing kernel against cuDNN SDPA in the same
run and checks each against cuDNN's output (docs/kernels.md: none beat the autotuner's pick).
"""
import itertools
import torch
import triton
from triton.testing import do_bench
from planforge.plugins.fused_attention import kernel as K
B, H, S, D = 1, 32, 4096, 128
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
b = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
from torch.nn.attention import sdpa_kernel, SDPBackend
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    t_cudnn = b(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
flops = 4 * B * H * S * S * D / 2
print("cudnn", t_cudnn, flops / t_cudnn / 1e6, "current", b(lambda: K.prefill(q, k, v)), flush=True)
fn = K.prefill_kernel.fn
res = []
for bm, bn, w, st in itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3, 4, 5]):
    def run():
        o = torch.empty_like(q)
        fn[(triton.cdiv(S, bm), B * H)](q, k, v, o, K._qk_scale(0.0, D), S, S, H, 1, 0, 0,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            HEAD_D=D, WINDOWED=False, LONG=True, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
        return o
    try:
        err = (run().float() - ref.float()).abs().max().item()
        t = b(run)
    except Exception as e:
        print("fail", bm, bn, w, st, type(e).__name__, str(e)[:80], flush=True); continue
    res.append((t, bm, bn, w, st, err))
    print(f"{bm} {bn} {w} {st} {t:7.1f} us {flops / t / 1e6:5.0f} TF/s vs cudnn {t_cudnn / t:.3f} err {err:.1e}", flush=True)
res.sort()
print("best", res[:5])
