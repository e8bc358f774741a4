"""Qwen3: Llama with a per-head RMSNorm of the queries and keys before rotary (``q_norm``/``k_norm``), an
explicit ``head_dim``, and optional sliding-window layers (``layer_types``), read by the Llama adapter."""

from planforge.exporter.architectures.llama import LlamaAdapter, _norm
from planforge.exporter.registry import register_architecture
from planforge.exporter.spec import DecoderDims, DecoderWeights


@register_architecture("Qwen3ForCausalLM")
class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        weights = super().weights(model, dims)
        for i, (layer, block) in enumerate(zip(weights.layers, model.model.layers)):
            p = f"model.layers.{i}.self_attn"
            layer.q_norm = _norm(block.self_attn.q_norm, f"{p}.q_norm")
            layer.k_norm = _norm(block.self_attn.k_norm, f"{p}.k_norm")
        return weights
