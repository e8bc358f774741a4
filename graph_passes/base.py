"""The pass mechanism: graph passes on onnx-ir that build themselves from the options and report matches.

A pass is an ``onnx_ir`` in-place pass (``call(model) -> PassResult(model, modified)``)
that rewrites every graph of the model, subgraphs (``If``/``Loop`` bodies) included,
and counts the sites it rewrote. Its life in ``planforge optimize`` (the ordered list
is ``pipeline.PASSES``):

1. ``from_options(options, context)``: the pass for these options, or None when they
   do not ask for it. It checks its own preconditions here (``requires``), cheaply,
   so that every refusal comes before any expensive work.
2. ``prepare(context)``: expensive inputs (calibration statistics), once every pass exists.
3. the rewrite; a pass that was expected to fire and matched nothing is logged as a
   warning with the reasons it refused its candidates.
4. ``record(manifest)``: what it did, in ``planforge.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import onnx_ir as ir

from planforge.manifest import Manifest


def all_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph, then every subgraph held by a node attribute, at any depth."""
    yield model.graph
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.value
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.value


def ancestors(nodes) -> set:
    """The given nodes and every node they depend on."""
    seen, stack = set(), [n for n in nodes if n is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
    return seen


def descendants(values) -> set:
    """Every node that (transitively) consumes one of the given values."""
    seen, stack = set(), [u.node for v in values for u in v.uses()]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(u.node for out in node.outputs for u in out.uses())
    return seen


@dataclass
class PassContext:
    """What a pass may read while it builds and prepares itself: the source directory, its manifest and graph."""

    model_dir: Path
    manifest: Manifest
    model: ir.Model
    progress: Any  # a rich Progress (disabled when quiet): passes add their own tasks


class GraphPass(ir.passes.InPlacePass):
    """Base class: subclasses set ``name`` and implement ``rewrite_graph`` (returns the sites rewritten)."""

    name = "graph_pass"
    expected = True  # warn when it matches nothing

    def __init__(self):
        super().__init__()
        self.matches = 0
        self.refusals: list[str] = []

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["GraphPass"]:
        """The pass ``options`` ask for, its preconditions checked; None when they do not ask for it."""
        return None

    def prepare(self, context: PassContext) -> None:
        """Expensive inputs the rewrite needs, computed after every pass of the run has been built."""

    def settings(self) -> dict:
        return {}

    def rewrite_graph(self, graph: ir.Graph) -> int:
        raise NotImplementedError

    def refuse(self, why: str) -> None:
        self.refusals.append(why)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches = sum(self.rewrite_graph(graph) for graph in list(all_graphs(model)))
        return ir.passes.PassResult(model, modified=self.matches > 0)

    def report(self) -> "PassReport":
        return PassReport(self.name, self.matches, self.settings(), self.refusals)

    def record(self, manifest: Manifest) -> None:
        """Appends this pass to ``manifest.passes``; passes that change the I/O contract record that too."""
        manifest.passes.append(self.report().manifest_entry())


@dataclass
class PassReport:
    name: str
    matches: int
    settings: dict = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict:
        return {"name": self.name, "matches": self.matches, "settings": self.settings}


def applied(manifest: Manifest, name: str) -> bool:
    """Whether the pass ``name`` already ran on the model ``manifest`` describes."""
    return any(entry.get("name") == name for entry in manifest.passes)
