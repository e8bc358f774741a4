"""Phi-3 / Phi-3.5: Llama with fused projections, ``qkv_proj`` (q, k, v rows in that order) and ``gate_up_proj``
(gate rows, then up rows), split here into the shared records. Its su/longrope scaling comes with the model's
own rotary module. Longrope switches to its long factors for a forward call whose largest position reaches
``original_max_position_embeddings``; with a longer ``--max-seq-len`` the graph carries both tables and makes
the same switch per step (keys already cached keep the rotation they were written with, as in the model)."""

from __future__ import annotations

from typing import Optional

import torch

from planforge.errors import UnsupportedConfigError
from planforge.exporter.architectures.llama import LlamaAdapter, _linear, _norm
from planforge.exporter.registry import register_architecture
from planforge.exporter.spec import DecoderDims, DecoderWeights, LayerWeights, Linear


def _rope(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _rows(linear, name: str, role: str, start: int, stop: int) -> Linear:
    bias = None if linear.bias is None else linear.bias[start:stop]
    return Linear(module=name, role=role, weight=linear.weight[start:stop], bias=bias)


@register_architecture("Phi3ForCausalLM")
class Phi3Adapter(LlamaAdapter):
    family = "phi3"

    def dims(self, max_seq_len: Optional[int]) -> DecoderDims:
        dims = super().dims(max_seq_len)
        c, rope = self.config, _rope(self.config)
        if float(rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0) != 1.0:
            raise UnsupportedConfigError(f"{self.family}: partial_rotary_factor "
                                         f"{rope.get('partial_rotary_factor')} (rotary on part of each head) is not "
                                         "supported yet; the shared writer rotates whole heads.")
        return dims

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        q_rows, kv_rows, f = dims.num_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim, dims.intermediate_size
        layers = []
        for i, block in enumerate(model.model.layers):
            p = f"model.layers.{i}"
            qkv, gate_up = block.self_attn.qkv_proj, block.mlp.gate_up_proj
            layers.append(LayerWeights(
                attention_module=f"{p}.self_attn",
                attn_norm=_norm(block.input_layernorm, f"{p}.input_layernorm"),
                q_proj=_rows(qkv, f"{p}.self_attn.qkv_proj.q", "q_proj", 0, q_rows),
                k_proj=_rows(qkv, f"{p}.self_attn.qkv_proj.k", "k_proj", q_rows, q_rows + kv_rows),
                v_proj=_rows(qkv, f"{p}.self_attn.qkv_proj.v", "v_proj", q_rows + kv_rows, q_rows + 2 * kv_rows),
                o_proj=_linear(block.self_attn.o_proj, f"{p}.self_attn.o_proj", "o_proj"),
                mlp_norm=_norm(block.post_attention_layernorm, f"{p}.post_attention_layernorm"),
                gate_proj=_rows(gate_up, f"{p}.mlp.gate_up_proj.gate", "gate_proj", 0, f),
                up_proj=_rows(gate_up, f"{p}.mlp.gate_up_proj.up", "up_proj", f, 2 * f),
                down_proj=_linear(block.mlp.down_proj, f"{p}.mlp.down_proj", "down_proj"),
            ))
        embed = model.model.embed_tokens.weight
        cos, sin = self.rotary_tables(model, dims)
        long = None
        original = getattr(self.config, "original_max_position_embeddings", None)
        if _rope(self.config).get("rope_type", _rope(self.config).get("type")) in ("longrope", "su") and original \
                and dims.max_seq_len > original:
            long = (cos, sin, original)  # every position at once: the module's long factors
            short_cos, short_sin = self.rotary_tables(model, dims, limit=original)  # positions < original
            cos, sin = torch.cat([short_cos, cos[original:]]), torch.cat([short_sin, sin[original:]])
        return DecoderWeights(embed_module="model.embed_tokens", embed_tokens=embed, layers=layers,
                              final_norm=_norm(model.model.norm, "model.norm"),
                              lm_head=_linear(model.lm_head, "lm_head", "lm_head"),
                              tied_lm_head=model.lm_head.weight.data_ptr() == embed.data_ptr(),
                              rotary_cos=cos, rotary_sin=sin, rotary_long=long)
