"""OPT: LayerNorm before each block, learned absolute positions stored with an offset of 2 rows, a ReLU MLP
(fc1, fc2) and biases everywhere, tied head. opt-350m's variant: a token table narrower than the blocks
(``word_embed_proj_dim``: ``project_in`` after the lookup, before the positions are added, ``project_out``
before the head) and LayerNorms after each residual Add (``do_layer_norm_before=False``), with no norm after
the last block."""

from __future__ import annotations

from typing import Optional

from planforge.exporter.architectures.llama import _linear
from planforge.exporter.registry import ArchitectureAdapter, register_architecture
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights, LayerWeights, Norm

POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding: position p reads row p + 2


def _layer_norm(module, name: str) -> Norm:
    """A LayerNorm; without elementwise affine parameters, the identity ones."""
    import torch

    weight = module.weight if module.weight is not None else torch.ones(module.normalized_shape)
    bias = module.bias if module.bias is not None else torch.zeros(module.normalized_shape)
    return Norm(name, weight, bias)


@register_architecture("OPTForCausalLM")
class OPTAdapter(ArchitectureAdapter):
    family = "opt"

    def dims(self, max_seq_len: Optional[int]) -> DecoderDims:
        c = self.config
        return DecoderDims(
            num_layers=c.num_hidden_layers, hidden_size=c.hidden_size, num_heads=c.num_attention_heads,
            num_kv_heads=c.num_attention_heads, head_dim=c.hidden_size // c.num_attention_heads,
            intermediate_size=c.ffn_dim, vocab_size=c.vocab_size,
            max_seq_len=self.resolve_max_seq_len(max_seq_len, c.max_position_embeddings, hard_limit=True))

    def style(self) -> DecoderStyle:
        c = self.config
        return DecoderStyle(norm="layer", norm_eps=1e-5, positions="learned",
                            activation=self.activation(c.activation_function), gated_mlp=False,
                            sliding_windows=(None,) * c.num_hidden_layers,
                            attention_scales=(None,) * c.num_hidden_layers,
                            norm_position="pre" if c.do_layer_norm_before else "post")

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        d = model.model.decoder
        final = getattr(d, "final_layer_norm", None)  # None after post-norm blocks, or _remove_final_layer_norm
        project = {name: _linear(getattr(d, name), f"model.decoder.{name}", name)
                   for name in ("project_in", "project_out") if getattr(d, name, None) is not None}
        layers = []
        for i, block in enumerate(d.layers):
            p = f"model.decoder.layers.{i}"
            attn = block.self_attn
            layers.append(LayerWeights(
                attention_module=f"{p}.self_attn",
                attn_norm=_layer_norm(block.self_attn_layer_norm, f"{p}.self_attn_layer_norm"),
                q_proj=_linear(attn.q_proj, f"{p}.self_attn.q_proj", "q_proj"),
                k_proj=_linear(attn.k_proj, f"{p}.self_attn.k_proj", "k_proj"),
                v_proj=_linear(attn.v_proj, f"{p}.self_attn.v_proj", "v_proj"),
                o_proj=_linear(attn.out_proj, f"{p}.self_attn.out_proj", "o_proj"),
                mlp_norm=_layer_norm(block.final_layer_norm, f"{p}.final_layer_norm"),
                up_proj=_linear(block.fc1, f"{p}.fc1", "up_proj"),
                down_proj=_linear(block.fc2, f"{p}.fc2", "down_proj"),
            ))
        embed = d.embed_tokens.weight
        return DecoderWeights(
            embed_module="model.decoder.embed_tokens", embed_tokens=embed, layers=layers,
            final_norm=_layer_norm(final, "model.decoder.final_layer_norm") if final is not None else None,
            lm_head=_linear(model.lm_head, "lm_head", "lm_head"),
            tied_lm_head=model.lm_head.weight.data_ptr() == embed.data_ptr(),
            position_embeddings=d.embed_positions.weight[POSITION_OFFSET:POSITION_OFFSET + dims.max_seq_len],
            position_module="model.decoder.embed_positions", **project)
