"""Qwen2: Llama with biases on q/k/v and optional sliding-window layers (``layer_types``).

Biases and windows need no code of their own: the shared linear picks up
``module.bias`` and the Llama adapter reads ``layer_types``.
"""

from planforge.exporter.architectures.llama import LlamaAdapter
from planforge.exporter.registry import register_architecture


@register_architecture("Qwen2ForCausalLM")
class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
