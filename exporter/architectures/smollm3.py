"""SmolLM3: Llama in which some layers attend without positions (``no_rope_layers[i] == 0``: no rotary, "NoPE"),
with sliding windows only where ``use_sliding_window`` is set."""

from dataclasses import replace
from typing import Optional

from planforge.exporter.architectures.llama import LlamaAdapter
from planforge.exporter.registry import register_architecture
from planforge.exporter.spec import DecoderStyle


@register_architecture("SmolLM3ForCausalLM")
class SmolLM3Adapter(LlamaAdapter):
    family = "smollm3"

    def sliding_windows(self) -> tuple[Optional[int], ...]:
        if not getattr(self.config, "use_sliding_window", False):
            return (None,) * self.config.num_hidden_layers
        return super().sliding_windows()

    def style(self) -> DecoderStyle:
        c = self.config
        return replace(super().style(), rotary_layers=tuple(bool(flag) for flag in c.no_rope_layers[:c.num_hidden_layers]))
