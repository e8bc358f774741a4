"""A small, declarative description of a plugin op's ONNX contract.

Graph lowering (a later issue) turns each :class:`OpSchema` into an ONNX node in
domain ``planforge`` and a TensorRT plugin of the same name; the reference
implementation in ``reference.py`` defines the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtypes: tuple[str, ...]
    shape: str  # symbolic, e.g. "[B, Hq, S, D]"
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class AttrSpec:
    name: str
    type: str  # "int" | "float"
    default: object
    doc: str = ""


@dataclass(frozen=True)
class OpSchema:
    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttrSpec, ...] = field(default_factory=tuple)
    doc: str = ""
    domain: str = "planforge"
    mutates: tuple[str, ...] = field(default_factory=tuple)  # inputs updated in place

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.name}"

    def attribute_defaults(self) -> dict[str, object]:
        return {a.name: a.default for a in self.attributes}
