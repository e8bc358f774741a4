"""Gemma and Gemma 2: Llama-like blocks with RMSNorm scaled by (1 + w), the embedding scaled by sqrt(hidden),
a GeGLU (gelu-tanh gated) MLP and an explicit head_dim. Gemma 2 adds a norm on each branch's output before its
residual Add, attention and final-logit soft-capping, ``query_pre_attn_scalar`` for the softmax scale, and
alternating sliding/global layers (``layer_types``)."""

from __future__ import annotations

from dataclasses import replace

import torch

from planforge.exporter.architectures.llama import LlamaAdapter
from planforge.exporter.registry import register_architecture
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights, Norm


def plus_one(norm: Norm) -> Norm:
    """Gemma's RMSNorm multiplies by (1 + w): the graph's RMSNormalization takes that as its scale."""
    return Norm(module=norm.module, weight=norm.weight.detach().float() + 1.0, bias=norm.bias)


@register_architecture("GemmaForCausalLM")
class GemmaAdapter(LlamaAdapter):
    family = "gemma"

    def style(self) -> DecoderStyle:
        return replace(super().style(), embedding_scale=float(torch.tensor(self.config.hidden_size ** 0.5)))

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        weights = super().weights(model, dims)
        for layer in weights.layers:
            layer.attn_norm, layer.mlp_norm = plus_one(layer.attn_norm), plus_one(layer.mlp_norm)
        weights.final_norm = plus_one(weights.final_norm)
        return weights


@register_architecture("Gemma2ForCausalLM")
class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"

    def style(self) -> DecoderStyle:
        c = self.config
        return replace(super().style(),
                       attention_scales=(float(c.query_pre_attn_scalar) ** -0.5,) * c.num_hidden_layers,
                       attention_softcap=c.attn_logit_softcapping, logits_softcap=c.final_logit_softcapping)

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        weights = super().weights(model, dims)  # mlp_norm read from post_attention_layernorm: Gemma 2 renames
        for i, (layer, block) in enumerate(zip(weights.layers, model.model.layers)):
            p = f"model.layers.{i}"
            layer.post_attn_norm = plus_one(Norm(f"{p}.post_attention_layernorm", block.post_attention_layernorm.weight))
            layer.mlp_norm = plus_one(Norm(f"{p}.pre_feedforward_layernorm", block.pre_feedforward_layernorm.weight))
            layer.post_mlp_norm = plus_one(Norm(f"{p}.post_feedforward_layernorm", block.post_feedforward_layernorm.weight))
        return weights


@register_architecture("Gemma3ForCausalLM")
class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 (text): Gemma 2's block with a (1 + w) RMSNorm of each head's q and k before rotary, no soft-capping
    by default, and a rotary base per layer type (local sliding layers and global ones)."""

    family = "gemma3"

    def _layer_types(self) -> list[str]:
        return list(self.config.layer_types)

    def _default_type(self) -> str:
        types = self._layer_types()
        return "full_attention" if "full_attention" in types else types[0]

    def rotary_tables(self, model, dims: DecoderDims, layer_type: str | None = None):
        positions = torch.arange(dims.max_seq_len)[None]  # (1, N)
        probe = torch.zeros(1, 1, dims.head_dim, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(probe, positions, layer_type or self._default_type())  # (1, N, D)
        half = dims.head_dim // 2
        return cos[0, :, :half].float(), sin[0, :, :half].float()

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        weights = super().weights(model, dims)  # the model's table is the default layer type's
        default = self._default_type()
        for kind in sorted(set(self._layer_types()) - {default}):
            weights.layer_rotary[kind] = self.rotary_tables(model, dims, kind)
        for i, (layer, block, kind) in enumerate(zip(weights.layers, model.model.layers, self._layer_types())):
            p = f"model.layers.{i}.self_attn"
            layer.rotary_table = None if kind == default else kind
            layer.q_norm = plus_one(Norm(f"{p}.q_norm", block.self_attn.q_norm.weight))
            layer.k_norm = plus_one(Norm(f"{p}.k_norm", block.self_attn.k_norm.weight))
        return weights
