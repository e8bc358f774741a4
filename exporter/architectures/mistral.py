"""Mistral: Llama with a ``sliding_window`` on every layer."""

from __future__ import annotations

from typing import Optional

from planforge.exporter.architectures.llama import LlamaAdapter
from planforge.exporter.registry import register_architecture


@register_architecture("MistralForCausalLM")
class MistralAdapter(LlamaAdapter):
    family = "mistral"

    def sliding_windows(self) -> tuple[Optional[int], ...]:
        if getattr(self.config, "layer_types", None) is not None:
            return super().sliding_windows()
        return (getattr(self.config, "sliding_window", None),) * self.config.num_hidden_layers
