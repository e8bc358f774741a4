"""GPT-2: LayerNorm, learned absolute positions, fused c_attn (Conv1D), GELU MLP, tied head."""

from __future__ import annotations

import math
from typing import Optional

import torch

from planforge.errors import UnsupportedConfigError
from planforge.exporter.registry import ArchitectureAdapter, register_architecture
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights, LayerWeights, Linear, Norm


def _conv1d(module: torch.nn.Module, name: str, role: str) -> Linear:
    # transformers' Conv1D stores weight as [in, out]; the shared records use [out, in].
    return Linear(module=name, role=role, weight=module.weight.t(), bias=module.bias)


@register_architecture("GPT2LMHeadModel")
class GPT2Adapter(ArchitectureAdapter):
    family = "gpt2"

    def dims(self, max_seq_len: Optional[int]) -> DecoderDims:
        c = self.config
        return DecoderDims(
            num_layers=c.n_layer,
            hidden_size=c.n_embd,
            num_heads=c.n_head,
            num_kv_heads=c.n_head,
            head_dim=c.n_embd // c.n_head,
            intermediate_size=c.n_inner or 4 * c.n_embd,
            vocab_size=c.vocab_size,
            max_seq_len=self.resolve_max_seq_len(max_seq_len, c.n_positions, hard_limit=True),
        )

    def style(self) -> DecoderStyle:
        c = self.config
        if getattr(c, "add_cross_attention", False):
            raise UnsupportedConfigError("gpt2 with add_cross_attention=True is an encoder-decoder; export the decoder-only model.")
        head_dim = c.n_embd // c.n_head
        scales = []
        for i in range(c.n_layer):
            scale = 1.0 / math.sqrt(head_dim) if c.scale_attn_weights else 1.0
            scales.append(scale / (i + 1) if c.scale_attn_by_inverse_layer_idx else scale)
        return DecoderStyle(
            norm="layer",
            norm_eps=float(c.layer_norm_epsilon),
            positions="learned",
            activation=self.activation(c.activation_function),
            gated_mlp=False,
            sliding_windows=(None,) * c.n_layer,
            attention_scales=tuple(scales),
        )

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        t = model.transformer
        layers = []
        for i, block in enumerate(t.h):
            p = f"transformer.h.{i}"
            qkv = _conv1d(block.attn.c_attn, f"{p}.attn.c_attn", "qkv")
            q_w, k_w, v_w = qkv.weight.split(dims.hidden_size, dim=0)
            q_b, k_b, v_b = qkv.bias.split(dims.hidden_size, dim=0)

            def split(role, weight, bias, prefix=p):
                return Linear(f"{prefix}.attn.c_attn.{role}", role, weight, bias)

            layers.append(LayerWeights(
                attention_module=f"{p}.attn",
                attn_norm=Norm(f"{p}.ln_1", block.ln_1.weight, block.ln_1.bias),
                q_proj=split("q_proj", q_w, q_b),
                k_proj=split("k_proj", k_w, k_b),
                v_proj=split("v_proj", v_w, v_b),
                o_proj=_conv1d(block.attn.c_proj, f"{p}.attn.c_proj", "o_proj"),
                mlp_norm=Norm(f"{p}.ln_2", block.ln_2.weight, block.ln_2.bias),
                up_proj=_conv1d(block.mlp.c_fc, f"{p}.mlp.c_fc", "up_proj"),
                down_proj=_conv1d(block.mlp.c_proj, f"{p}.mlp.c_proj", "down_proj"),
            ))
        return DecoderWeights(
            embed_module="transformer.wte",
            embed_tokens=t.wte.weight,
            layers=layers,
            final_norm=Norm("transformer.ln_f", t.ln_f.weight, t.ln_f.bias),
            lm_head=Linear("lm_head", "lm_head", model.lm_head.weight),
            tied_lm_head=model.lm_head.weight.data_ptr() == t.wte.weight.data_ptr(),
            position_embeddings=t.wpe.weight[: dims.max_seq_len],
            position_module="transformer.wpe",
        )
