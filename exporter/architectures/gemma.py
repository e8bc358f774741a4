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
