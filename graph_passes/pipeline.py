"""The pass mechanism: graph passes on onnx-ir, run in one ordered pipeline that reports per-pass matches.

A pass is an ``onnx_ir`` in-place pass (``call(model) -> PassResult(model, modified)``)
that rewrites every graph of the model, subgraphs (``If``/``Loop`` bodies) included,
and counts the sites it rewrote. A pass that was expected to fire and matched
nothing is logged as a warning with the reasons it refused its candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import onnx_ir as ir

log = logging.getLogger(__name__)


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


class GraphPass(ir.passes.InPlacePass):
    """Base class: subclasses set ``name`` and implement ``rewrite_graph`` (returns the sites rewritten)."""

    name = "graph_pass"
    expected = True  # warn when it matches nothing

    def __init__(self):
        super().__init__()
        self.matches = 0
        self.refusals: list[str] = []

    def settings(self) -> dict:
        return {}

    def rewrite_graph(self, graph: ir.Graph) -> int:
        raise NotImplementedError

    def refuse(self, why: str) -> None:
        self.refusals.append(why)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.matches = sum(self.rewrite_graph(graph) for graph in list(all_graphs(model)))
        return ir.passes.PassResult(model, modified=self.matches > 0)


@dataclass
class PassReport:
    name: str
    matches: int
    settings: dict = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict:
        return {"name": self.name, "matches": self.matches, "settings": self.settings}


class Pipeline:
    """Runs its passes in the listed order on one model and reports what each matched."""

    def __init__(self, passes: list[GraphPass]):
        self.passes = list(passes)

    def __call__(self, model: ir.Model) -> list[PassReport]:
        reports = []
        for graph_pass in self.passes:
            graph_pass(model)
            report = PassReport(graph_pass.name, graph_pass.matches, graph_pass.settings(), graph_pass.refusals)
            if graph_pass.expected and report.matches == 0:
                why = "; ".join(sorted(set(report.refusals))[:3]) or "no candidate node in the graph"
                log.warning("graph pass %s matched nothing: %s", report.name, why)
            reports.append(report)
        return reports
