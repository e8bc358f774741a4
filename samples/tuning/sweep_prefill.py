"""Config sweep of the fused_attention prefill kernel on a GPU (causal, B1 H32 S4096 D128 bf16).

    python samples/tuning/sweep_prefill.py [BUDGET_S]

Times cuDNN and SDPA-flash, the shipped kernel (autotuned), then every (BLOCK_M, BLOCK_N, warps,
stages) of it through ``kernel.prefill(config=)``, each checked against cuDNN's output; stops
starting new configs after BUDGET_S seconds (default 300).
"""
import itertools
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from planforge.plugins.fused_attention import kernel as K

budget_s = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
start = time.time()
B, H, S, D = 1, 32, 4096, 128
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
bench = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3  # noqa: E731
flops = 4 * B * H * S * S * D / 2
sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    t_cudnn = bench(sdpa)
    ref = sdpa().float()
with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    t_flash = bench(sdpa)
t_cur = bench(lambda: K.prefill(q, k, v))
print(f"cuDNN {t_cudnn:.1f} us ({flops / t_cudnn / 1e6:.0f} TF/s), flash {t_flash:.1f}, shipped kernel {t_cur:.1f}"
      f" ({t_cudnn / t_cur:.3f}x cuDNN, {t_flash / t_cur:.3f}x flash)", flush=True)
res = []
for cfg in itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3, 4]):
    if time.time() - start > budget_s:
        print("time budget hit")
        break
    try:
        err = (K.prefill(q, k, v, config=cfg).float() - ref).abs().max().item()
        t = bench(lambda: K.prefill(q, k, v, config=cfg))
    except Exception as e:  # noqa: BLE001 - a config that does not fit is reported and skipped
        print("fail", cfg, type(e).__name__, str(e)[:80], flush=True)
        continue
    res.append((t, cfg, err))
    print(f"{cfg} {t:7.1f} us {flops / t / 1e6:4.0f} TF/s {t_cudnn / t:.3f}x cuDNN {t_flash / t:.3f}x flash"
          f" err {err:.1e}", flush=True)
res.sort()
print("best", res[:4])
