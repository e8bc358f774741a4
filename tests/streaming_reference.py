"""An independent torch reference of StreamingLLM: a transformers Llama-family model stepped one token at a time
with a cache of the first ``sinks`` tokens plus the ``window`` most recent, keys kept un-rotated and re-positioned
by their index in the cache at every step. It shares no code with the ONNX graph pass."""

from __future__ import annotations

from typing import Optional

import torch
from transformers.models.llama.modeling_llama import rotate_half


def _rope(model, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (H, L, D) rotated by positions (L,)."""
    cos, sin = model.model.rotary_emb(x[None], positions[None])  # (1, L, D)
    return x * cos + rotate_half(x) * sin


@torch.no_grad()
def streaming_logits(model, ids: list[int], sinks: int, window: int, model_window: Optional[int] = None
                     ) -> torch.Tensor:
    """Logits (len(ids), V) of ``ids`` fed one token per step through a sink + window cache."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    # Granite's multipliers (1 for the other families)
    embed_scale, residual_scale = getattr(cfg, "embedding_multiplier", 1.0), getattr(cfg, "residual_multiplier", 1.0)
    logits_divisor = getattr(cfg, "logits_scaling", 1.0)
    caches = [[] for _ in model.model.layers]  # per layer: [(token index, k (Hkv, D) un-rotated, v)]
    out = []
    for t, token in enumerate(ids):
        x = model.model.embed_tokens(torch.tensor([token])) * embed_scale  # (1, hidden)
        for layer, cache in zip(model.model.layers, caches):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(heads, 1, head_dim)
            k = attn.k_proj(h).view(kv_heads, head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before rotary
                q, k = attn.q_norm(q), attn.k_norm(k)
            v = attn.v_proj(h).view(kv_heads, head_dim)
            cache.append((t, k, v))
            kept = [c for c in cache if c[0] < sinks or c[0] > t - window]  # sinks + the W most recent
            cache[:] = kept
            positions = torch.arange(len(kept))  # re-indexed inside the cache
            keys = _rope(model, torch.stack([c[1] for c in kept], 1), positions)  # (Hkv, L, D)
            values = torch.stack([c[2] for c in kept], 1)
            q = _rope(model, q, positions[-1:])  # the current token is the newest slot
            visible = torch.tensor([model_window is None or t - c[0] < model_window for c in kept])
            group = heads // kv_heads
            keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
            scores = (q @ keys.transpose(1, 2)) * attn.scaling  # (H, 1, L)
            scores = scores.masked_fill(~visible, float("-inf"))
            y = (scores.softmax(-1) @ values).reshape(1, heads * head_dim)
            x = x + attn.o_proj(y) * residual_scale
            x = x + layer.mlp(layer.post_attention_layernorm(x)) * residual_scale
        out.append(model.lm_head(model.model.norm(x))[0] / logits_divisor)
    return torch.stack(out)
