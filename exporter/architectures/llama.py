"""Llama: RMSNorm, rotary positions, GQA, gated SiLU MLP. Mistral and Qwen2 extend it."""

from __future__ import annotations

from typing import Optional

import torch

from planforge.exporter.registry import ArchitectureAdapter, register_architecture
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights, LayerWeights, Linear, Norm


def _linear(module: torch.nn.Module, name: str, role: str) -> Linear:
    return Linear(module=name, role=role, weight=module.weight, bias=module.bias)


def _norm(module: torch.nn.Module, name: str) -> Norm:
    return Norm(module=name, weight=module.weight, bias=getattr(module, "bias", None))


@register_architecture("LlamaForCausalLM")
class LlamaAdapter(ArchitectureAdapter):
    family = "llama"

    def dims(self, max_seq_len: Optional[int]) -> DecoderDims:
        c = self.config
        return DecoderDims(
            num_layers=c.num_hidden_layers,
            hidden_size=c.hidden_size,
            num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            vocab_size=c.vocab_size,
            max_seq_len=self.resolve_max_seq_len(max_seq_len, c.max_position_embeddings, hard_limit=False),
        )

    def sliding_windows(self) -> tuple[Optional[int], ...]:
        """Per-layer windows from ``layer_types`` where the config has them (Qwen2, newer Mistral)."""
        c = self.config
        layer_types = getattr(c, "layer_types", None)
        if layer_types is None:
            return (None,) * c.num_hidden_layers
        return tuple(c.sliding_window if kind == "sliding_attention" else None for kind in layer_types)

    def style(self) -> DecoderStyle:
        c = self.config
        return DecoderStyle(
            norm="rms",
            norm_eps=float(c.rms_norm_eps),
            positions="rotary",
            activation=self.activation(getattr(c, "hidden_activation", None) or c.hidden_act),  # Gemma's name first
            gated_mlp=True,
            sliding_windows=self.sliding_windows(),
            attention_scales=(None,) * c.num_hidden_layers,
        )

    def rotary_tables(self, model, dims: DecoderDims, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin caches [max_seq_len (or limit), head_dim/2] from the model's own rotary module, called once on
        every position, so every rope scaling type the model supports is reproduced exactly."""
        positions = torch.arange(limit or dims.max_seq_len)[None]  # (1, N)
        probe = torch.zeros(1, 1, dims.head_dim, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(probe, positions)  # (1, N, D)
        half = dims.head_dim // 2
        return cos[0, :, :half].float(), sin[0, :, :half].float()

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        layers = []
        for i, block in enumerate(model.model.layers):
            p = f"model.layers.{i}"
            attn, mlp = block.self_attn, block.mlp
            layers.append(LayerWeights(
                attention_module=f"{p}.self_attn",
                attn_norm=_norm(block.input_layernorm, f"{p}.input_layernorm"),
                q_proj=_linear(attn.q_proj, f"{p}.self_attn.q_proj", "q_proj"),
                k_proj=_linear(attn.k_proj, f"{p}.self_attn.k_proj", "k_proj"),
                v_proj=_linear(attn.v_proj, f"{p}.self_attn.v_proj", "v_proj"),
                o_proj=_linear(attn.o_proj, f"{p}.self_attn.o_proj", "o_proj"),
                mlp_norm=_norm(block.post_attention_layernorm, f"{p}.post_attention_layernorm"),
                gate_proj=_linear(mlp.gate_proj, f"{p}.mlp.gate_proj", "gate_proj"),
                up_proj=_linear(mlp.up_proj, f"{p}.mlp.up_proj", "up_proj"),
                down_proj=_linear(mlp.down_proj, f"{p}.mlp.down_proj", "down_proj"),
            ))
        embed = model.model.embed_tokens.weight
        cos, sin = self.rotary_tables(model, dims)
        return DecoderWeights(
            embed_module="model.embed_tokens",
            embed_tokens=embed,
            layers=layers,
            final_norm=_norm(model.model.norm, "model.norm"),
            lm_head=_linear(model.lm_head, "lm_head", "lm_head"),
            tied_lm_head=model.lm_head.weight.data_ptr() == embed.data_ptr(),
            rotary_cos=cos,
            rotary_sin=sin,
        )
