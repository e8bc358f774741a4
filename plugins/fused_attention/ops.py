"""``torch.ops.planforge.fused_attention_{prefill,decode}``: CUDA runs Triton, CPU the reference."""

from __future__ import annotations

import torch

from .._triton import use_kernel
from . import reference


@torch.library.custom_op("planforge::fused_attention_prefill", mutates_args=())
def fused_attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 0.0,
                            window: int = 0, sinks: int = 0) -> torch.Tensor:
    if use_kernel(q):
        from . import kernel  # noqa: PLC0415 (Triton is imported lazily)

        return kernel.prefill(q, k, v, scale, window, sinks)
    return reference.attention_prefill(q, k, v, scale, window, sinks)


@fused_attention_prefill.register_fake
def _(q, k, v, scale=0.0, window=0, sinks=0):
    torch._check(q.dim() == 4 and k.dim() == 4 and q.shape[1] % k.shape[1] == 0)
    return torch.empty_like(q)  # (B, Hq, Sq, D)


@torch.library.custom_op("planforge::fused_attention_decode", mutates_args=())
def fused_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float = 0.0) -> torch.Tensor:
    if use_kernel(q):
        from . import kernel  # noqa: PLC0415

        return kernel.decode(q, k_cache, v_cache, seq_lens, scale)
    return reference.attention_decode(q, k_cache, v_cache, seq_lens, scale)


@fused_attention_decode.register_fake
def _(q, k_cache, v_cache, seq_lens, scale=0.0):
    torch._check(q.dim() == 3 and k_cache.dim() == 4 and q.shape[1] % k_cache.shape[1] == 0)
    return torch.empty_like(q)  # (B, Hq, D)
