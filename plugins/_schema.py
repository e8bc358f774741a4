"""A small, declarative description of a plugin op's ONNX contract.

Graph lowering turns an :class:`OpSchema` into an ONNX node in domain
``planforge`` (registered with ONNX by ``plugins/registry.py``, with shape
inference from the symbolic shapes below), the torch backend runs it through
``torch.ops.planforge.<torch_op>``, and TensorRT through a plugin of the same
name; the reference implementation in ``reference.py`` defines the numbers.

``signature()`` is what a graph depends on: names, dtypes, shapes, attributes,
aliasing. Changing it means bumping ``version`` (``tests/plugins/test_registry.py``
keeps a hash of each signature).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Activation/weight dtypes of every op. float32 runs the torch reference on any device (the CPU
# oracle for fp32 exports); the Triton kernels and TensorRT plugins take float16 and bfloat16.
FLOAT = ("float32", "float16", "bfloat16")


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
    # Outputs that are the named input, updated in place (same buffer): {"k_cache_out": "k_cache"}.
    aliases: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    torch_op: str = ""  # the torch.ops.planforge.* name that implements it
    # TensorRT runs it as an AOT plugin (one Triton kernel embedded in the engine, no Python at run
    # time) rather than a Python one (plugins/_tensorrt.py). Not part of the contract a graph relies on.
    tensorrt_aot: bool = False


    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.name}"

    def attribute_defaults(self) -> dict[str, object]:
        return {a.name: a.default for a in self.attributes}

    def signature(self) -> str:
        """Everything a lowered graph relies on, as one canonical string (docs excluded)."""
        tensors = lambda specs: [(t.name, t.dtypes, t.shape, t.optional) for t in specs]  # noqa: E731
        return repr((self.qualified_name, self.version, tensors(self.inputs), tensors(self.outputs),
                     [(a.name, a.type, a.default) for a in self.attributes], self.mutates, self.aliases))
