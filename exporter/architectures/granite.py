"""Granite: Llama with four multipliers, on the embedding, the attention logits (in place of 1/sqrt(D)),
each residual branch, and the final logits (a divisor)."""

from dataclasses import replace

from planforge.exporter.architectures.llama import LlamaAdapter
from planforge.exporter.registry import register_architecture
from planforge.exporter.spec import DecoderStyle


@register_architecture("GraniteForCausalLM")
class GraniteAdapter(LlamaAdapter):
    family = "granite"

    def style(self) -> DecoderStyle:
        c = self.config
        return replace(super().style(), attention_scales=(float(c.attention_multiplier),) * c.num_hidden_layers,
                       embedding_scale=float(c.embedding_multiplier), residual_scale=float(c.residual_multiplier),
                       logits_divisor=float(c.logits_scaling))
