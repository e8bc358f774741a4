"""Split-count and tile sweep of the fused_attention decode kernel on a GPU (bench_kernels.py's cases).

    python samples/tuning/sweep_decode.py [BUDGET_S] [tma]

For B=16 Hq=32 Hkv=8 ctx=4096 D=128 bf16 (and B=1 ctx=32768), times kernel.decode with every
(num_splits, BLOCK_N, warps, stages) with triton.testing.do_bench (L2 flushed), checks each against
cuDNN SDPA's output, and prints the best SDPA backend of the same run. ``tma``: K/V read through TMA
descriptors, around the shipped tile.
"""

import itertools
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from planforge.plugins.fused_attention import kernel as K

budget_s = float(sys.argv[1]) if len(sys.argv) > 1 else 240.0
tma_only = len(sys.argv) > 2 and sys.argv[2] == "tma"
bench = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3  # noqa: E731
start = time.time()
for B, hq, hkv, ctx in [(16, 32, 8, 4096), (1, 32, 8, 32768)]:
    D = 128
    q = torch.randn(B, hq, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, hkv, ctx, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)  # noqa: E731
        ref = sdpa()[:, :, 0].float()
        t_ref = bench(sdpa)
    gbytes = 2 * k.numel() * k.element_size()
    t_cur = bench(lambda: K.decode(q, k, v, lens))
    print(f"B={B} ctx={ctx}: cudnn {t_ref:.1f} us ({gbytes / t_ref / 1e3:.0f} GB/s), shipped {t_cur:.1f} us "
          f"(splits {K.default_num_splits(B * hkv, ctx, q.device)}, {K.DECODE_CONFIG})", flush=True)
    results = []
    space = itertools.product([2, 3, 4, 5, 6, 8, 12, 16, 33, 66], [32, 64, 128], [4, 8], [2, 3, 4], [False])
    if tma_only:  # TMA descriptors for K/V around the shipped tile
        space = itertools.product([1, 2, 3, 4, 8, 16, 17, 33], [64, 128], [4], [2, 3, 4], [True])
    for splits, bn, warps, stages, tma in space:
        if time.time() - start > budget_s * (1 if B == 1 else 0.6):
            print("time budget hit")
            break
        try:
            fn = lambda: K.decode(q, k, v, lens, num_splits=splits, config=(bn, warps, stages, tma))  # noqa: E731
            err = (fn().float() - ref).abs().max().item()
            t = bench(fn)
        except Exception as e:  # out of shared memory for some tiles
            print("fail", splits, bn, warps, stages, type(e).__name__, flush=True)
            continue
        results.append((t, splits, bn, warps, stages, tma, err))
        print(f"  splits {splits} BN {bn} w {warps} st {stages} tma {tma}: {t:.1f} us, {t_ref / t:.2f}x cuDNN, err {err:.1e}", flush=True)
    for r in sorted(results)[:5]:
        print(f"  BEST {r[0]:.1f} us {t_ref / r[0]:.3f}x cuDNN: splits {r[1]} BN {r[2]} w {r[3]} st {r[4]} tma {r[5]} err {r[6]:.1e}")
