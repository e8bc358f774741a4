"""Architecture adapters, registered by their Hugging Face ``architectures`` name.

Adding a family means one small file in ``exporter/architectures/`` with a class
decorated by ``@register_architecture("XForCausalLM")``, and one test.
"""

from __future__ import annotations

import logging
from typing import Optional

from planforge.errors import UnsupportedArchitectureError, UnsupportedConfigError
from planforge.exporter.spec import DecoderDims, DecoderStyle, DecoderWeights

log = logging.getLogger(__name__)

_ADAPTERS: dict[str, type["ArchitectureAdapter"]] = {}

# Hugging Face ``hidden_act`` values and the graph activation each becomes.
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


class ArchitectureAdapter:
    """Reads one family's config and weights into the shared decoder records."""

    family: str = ""

    def __init__(self, config):
        self.config = config

    def dims(self, max_seq_len: Optional[int]) -> DecoderDims:
        raise NotImplementedError

    def style(self) -> DecoderStyle:
        raise NotImplementedError

    def weights(self, model, dims: DecoderDims) -> DecoderWeights:
        raise NotImplementedError

    def activation(self, hidden_act: str) -> str:
        if hidden_act not in ACTIVATIONS:
            raise UnsupportedConfigError(
                f"{self.family}: activation {hidden_act!r} is not supported; "
                f"supported activations are {', '.join(sorted(ACTIVATIONS))}."
            )
        return ACTIVATIONS[hidden_act]

    def resolve_max_seq_len(self, requested: Optional[int], trained: int, hard_limit: bool) -> int:
        """--max-seq-len defaults to the model's own limit; learned positions cannot exceed it."""
        if requested is None:
            return trained
        if requested <= 0:
            raise UnsupportedConfigError(f"--max-seq-len must be positive, got {requested}.")
        if hard_limit and requested > trained:
            raise UnsupportedConfigError(
                f"{self.family} has learned position embeddings for {trained} positions; "
                f"--max-seq-len {requested} is larger. Use --max-seq-len {trained} or less."
            )
        if requested > trained:
            log.warning("%s was trained on %d positions; --max-seq-len %d goes beyond them and quality "
                        "past position %d is not what the model learned.", self.family, trained, requested, trained)
        return requested


def register_architecture(*names: str):
    def decorate(cls: type[ArchitectureAdapter]) -> type[ArchitectureAdapter]:
        for name in names:
            _ADAPTERS[name] = cls
        return cls

    return decorate


def supported_architectures() -> list[str]:
    import planforge.exporter.architectures  # noqa: F401  (registers the adapters)

    return sorted(_ADAPTERS)


def adapter_for(config) -> ArchitectureAdapter:
    supported = supported_architectures()
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in _ADAPTERS:
            return _ADAPTERS[name](config)
    found = ", ".join(names) or f"model_type {getattr(config, 'model_type', '?')!r} with no `architectures`"
    from planforge.exporter.architectures.structural import StructuralAdapter

    try:
        adapter = StructuralAdapter.fit(config)  # a family no adapter names, if it fits the records by structure
    except UnsupportedArchitectureError as misfit:
        raise UnsupportedArchitectureError(
            f"Architecture {found} is not supported: no adapter names it, and it does not fit the shared records "
            f"by structure ({misfit}). Supported architectures: {', '.join(supported)}. Support for a new family "
            "is one adapter file in exporter/architectures/.") from None
    log.info("%s has no adapter of its own; exporting it through the structural adapter", found)
    return adapter
