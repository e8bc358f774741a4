"""The structural adapter: a transformers-native decoder that no adapter names, exported when it fits Llama's
records by structure.

The fit is read from the model's own module tree (built on the meta device from the config: no weights, no
model code) and its config, not from a list of names:

- the model is ``model.{embed_tokens, layers, norm, rotary_emb}`` and ``lm_head``;
- every layer holds exactly ``self_attn`` (``q_proj k_proj v_proj o_proj`` linears), ``mlp`` (``gate_proj
  up_proj down_proj`` linears), and an RMSNorm before each (``input_layernorm``, ``post_attention_layernorm``),
  a norm having one weight of the hidden size; modules without parameters (dropout) are ignored;
- no config field that changes the math in a way the records do not express (soft-capping, multipliers,
  layers without rotary, q/k norms, partial rotary, ...) is set.

A module or field that fits no record is refused, naming it. What the structure cannot show (a forward that
scales, shifts or reorders differently) is caught by the export's check against the source model's logits
(``exporter/verify.py``), which refuses the export, so a wrong graph is never written.
"""

from __future__ import annotations

from typing import Optional

import torch

from planforge.errors import UnsupportedArchitectureError
from planforge.exporter.architectures.llama import LlamaAdapter

# Config fields whose non-default value changes the math beyond the records; each names the family that has it.
MATH_FIELDS = {
    "attn_logit_softcapping": None, "final_logit_softcapping": None, "query_pre_attn_scalar": None,
    "embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0, "attention_multiplier": None,
    "no_rope_layers": None, "use_qk_norm": False, "qk_layernorm": False, "partial_rotary_factor": 1.0,
    "scale_embedding": False, "num_experts": None, "num_local_experts": None, "n_routed_experts": None,
    "parallel_attn": False, "use_parallel_residual": False, "alibi": False,
}
LAYER_MODULES = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
ATTENTION_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP_MODULES = {"gate_proj", "up_proj", "down_proj"}


def _with_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: child for name, child in module.named_children() if any(True for _ in child.parameters())}


class StructuralAdapter(LlamaAdapter):
    """Llama's records for a family no adapter names (module doc); ``family`` is the config's model_type."""

    def __init__(self, config):
        super().__init__(config)
        self.family = str(getattr(config, "model_type", "unknown"))

    @classmethod
    def fit(cls, config) -> "StructuralAdapter":
        """The adapter, or UnsupportedArchitectureError naming the first module or field that does not fit."""
        name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        for field, default in MATH_FIELDS.items():
            value = getattr(config, field, default)
            if value not in (default, None, False, 0) and value != default:
                raise UnsupportedArchitectureError(f"{name}: config field {field} = {value!r} changes the math in "
                                                   "a way the shared decoder records do not express")
        rope = getattr(config, "rope_parameters", None) or {}
        if isinstance(rope, dict) and float(rope.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
            raise UnsupportedArchitectureError(f"{name}: rope partial_rotary_factor {rope['partial_rotary_factor']} "
                                               "(rotary on part of each head) is not expressed by the records")
        reason = cls._misfit(config)
        if reason:
            raise UnsupportedArchitectureError(f"{name}: {reason}")
        return cls(config)

    @staticmethod
    def _misfit(config) -> Optional[str]:
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 (a config transformers cannot build is simply not a fit)
            return f"transformers cannot build it from its config ({str(exc).splitlines()[0][:120]})"
        inner = getattr(model, "model", None)
        lm_head = getattr(model, "lm_head", None)
        if inner is None or not isinstance(lm_head, torch.nn.Linear):
            return "it has no model/lm_head pair of modules"
        for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if getattr(inner, part, None) is None:
                return f"model.{part} is missing (the records need embeddings, layers, a final norm and rotary)"
        extra = set(_with_parameters(inner)) - {"embed_tokens", "layers", "norm"}
        if extra:
            return f"model.{sorted(extra)[0]} holds parameters no record has a place for"
        if not _is_rms_norm(inner.norm, config.hidden_size):
            return f"model.norm is a {type(inner.norm).__name__}, not an RMSNorm with one weight"
        for i, layer in enumerate(inner.layers):
            where = f"model.layers.{i}"
            children = _with_parameters(layer)
            if set(children) != LAYER_MODULES:
                odd = sorted(set(children) ^ LAYER_MODULES)[0]
                what = "holds parameters no record has a place for" if odd in children else "is missing"
                return f"{where}.{odd} {what} (a layer is {', '.join(sorted(LAYER_MODULES))})"
            for norm in ("input_layernorm", "post_attention_layernorm"):
                if not _is_rms_norm(children[norm], config.hidden_size):
                    return f"{where}.{norm} is a {type(children[norm]).__name__}, not an RMSNorm with one weight"
            for part, expected in (("self_attn", ATTENTION_MODULES), ("mlp", MLP_MODULES)):
                found = _with_parameters(children[part])
                if set(found) != expected or not all(isinstance(m, torch.nn.Linear) for m in found.values()):
                    odd = sorted(set(found) ^ expected) or sorted(found)
                    return (f"{where}.{part}.{odd[0]} does not fit: the records take {', '.join(sorted(expected))} "
                            "as linears")
        return None


def _is_rms_norm(module: torch.nn.Module, hidden: int) -> bool:
    params = dict(module.named_parameters())
    return "RMSNorm" in type(module).__name__ and set(params) == {"weight"} and \
        tuple(params["weight"].shape) == (hidden,)
