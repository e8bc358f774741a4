"""Runs an ONNX graph node by node with torch: the torch backend's engine.

The file it runs is the one ONNX Runtime or TensorRT would take. Standard ops
go through ``ops.py``/``nn_ops.py``; ``planforge``-domain ops through the plugin
registry (``torch.ops.planforge.*``: the reference on CPU, the Triton kernel on
CUDA). ``If`` branches run as subgraphs that see the enclosing values by name.
A node no implementation exists for is refused when the graph is loaded, with
every missing op named, never halfway through a step.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import planforge.runtime.torch_graph.nn_ops  # noqa: F401 (registers the nn ops)
from planforge.errors import UnsupportedOpError
from planforge.plugins import DOMAIN
from planforge.plugins.registry import plugin_op
from planforge.runtime.torch_graph.cuda_graph import to_device
from planforge.runtime.torch_graph.ops import HOST_INPUTS, ONNX_OPS

_STANDARD_DOMAINS = ("", "ai.onnx")


_SHAPE_DTYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
_SHAPE_NUMEL = 64  # integer constants up to this size are shape arithmetic: they stay on the host


def tensor_from_proto(proto: onnx.TensorProto, device: str) -> torch.Tensor:
    """An initializer or constant as a torch tensor; 4-bit codes unpacked to one int8/uint8 each.

    Small integer constants (axes, shapes, indices of a few elements) stay on the CPU with the values
    ``Shape`` produces, so shape arithmetic never waits for the GPU; an op that mixes them with device
    tensors gets them moved (``_on_one_device``)."""
    array = numpy_helper.to_array(proto)
    if proto.data_type in _SHAPE_DTYPES and array.size <= _SHAPE_NUMEL:
        device = "cpu"
    if proto.data_type == onnx.TensorProto.BFLOAT16:
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16).to(device)
    if proto.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        array = array.astype(np.int8 if proto.data_type == onnx.TensorProto.INT4 else np.uint8)
    return torch.from_numpy(np.array(array, copy=True)).to(device)  # keeps 0-d; writable


@dataclass
class _Step:
    name: str
    run: Optional[Callable[..., Any]]  # None for an If, which runs one of its branches
    inputs: list[str]  # "" for an omitted optional input
    outputs: list[str]
    attributes: dict
    branches: Optional[tuple["_Body", "_Body"]] = None  # If: (then, else)
    host_inputs: frozenset = frozenset()  # shape/axes inputs, read on the host where they are
    release: tuple[str, ...] = ()  # values no later step reads: freed after this one


class _Body:
    """A graph's nodes compiled to steps (the main graph, or an ``If`` branch)."""

    def __init__(self, graph: onnx.GraphProto, device: str, keep: set[str]):
        self.device = device
        self.constants = {init.name: tensor_from_proto(init, device) for init in graph.initializer}
        self.outputs = [o.name for o in graph.output]
        self.steps = [self._compile(node) for node in graph.node]
        self._plan_release(keep | set(self.outputs))

    def _compile(self, node: onnx.NodeProto) -> _Step:
        attributes = {a.name: self._attribute(a) for a in node.attribute}
        if node.domain in _STANDARD_DOMAINS and node.op_type == "If":
            branches = (attributes.pop("then_branch"), attributes.pop("else_branch"))
            return _Step(node.name, None, list(node.input), list(node.output), {}, branches)
        if node.domain in _STANDARD_DOMAINS:
            return _Step(node.name, ONNX_OPS[node.op_type], list(node.input), list(node.output), attributes,
                         host_inputs=HOST_INPUTS.get(node.op_type, frozenset()))
        else:  # planforge (checked by unsupported_ops)
            op = plugin_op(node.op_type)
            run = lambda *inputs, _op=op, **attrs: tuple(_op.run(list(inputs), attrs))  # noqa: E731
        return _Step(node.name, run, list(node.input), list(node.output), attributes)

    def _attribute(self, attribute: onnx.AttributeProto):
        if attribute.type == onnx.AttributeProto.GRAPH:
            return _Body(attribute.g, self.device, keep=set())
        value = onnx.helper.get_attribute_value(attribute)
        if attribute.type == onnx.AttributeProto.TENSOR:
            return tensor_from_proto(value, self.device)
        if attribute.type == onnx.AttributeProto.STRING:
            return value.decode()
        if attribute.type == onnx.AttributeProto.STRINGS:
            return [v.decode() for v in value]
        return value

    def _plan_release(self, keep: set[str]) -> None:
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs + _captured(step):
                last[name] = i
        for i, step in enumerate(self.steps):
            step.release = tuple(n for n in step.inputs + _captured(step)
                                 if last.get(n) == i and n not in keep and n not in self.constants)

    def run(self, env: ChainMap) -> list[torch.Tensor]:
        scope = env.new_child(dict(self.constants))
        for step in self.steps:
            inputs = _on_one_device([scope[name] if name else None for name in step.inputs], step.host_inputs)
            if step.branches is not None:
                values = step.branches[0 if bool(inputs[0]) else 1].run(scope)
            else:
                try:
                    values = step.run(*inputs, **step.attributes)
                except Exception as exc:
                    raise RuntimeError(f"torch backend: node {step.name!r} failed: {exc}") from exc
            values = values if isinstance(values, (tuple, list)) else (values,)
            for name, value in zip(step.outputs, values):
                if name:
                    scope[name] = value
            for name in step.release:
                scope.maps[0].pop(name, None)
        return [scope[name] for name in self.outputs]


def _on_one_device(inputs: list, host: frozenset) -> list:
    """Host tensors (shape arithmetic) moved to the device when an op also reads device tensors; the op's
    shape and axes inputs (``host``) stay where they are."""
    devices = {t.device for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and i not in host}
    if len(devices) < 2:
        return inputs
    device = next(d for d in devices if d.type != "cpu")
    return [to_device(t, device) if isinstance(t, torch.Tensor) and t.device != device and i not in host else t
            for i, t in enumerate(inputs)]


def _captured(step: _Step) -> list[str]:
    """Outer values an ``If`` branch reads by name (its body's inputs not produced inside it)."""
    if step.branches is None:
        return []
    names = []
    for body in step.branches:
        produced = set(body.constants)
        for inner in body.steps:
            names += [n for n in inner.inputs + _captured(inner) if n and n not in produced]
            produced.update(inner.outputs)
        names += [n for n in body.outputs if n not in produced]
    return names


def unsupported_ops(graph: onnx.GraphProto) -> list[str]:
    """``domain::op`` of every node (subgraphs included) the torch backend has no implementation for."""
    from planforge.plugins.registry import plugin_ops

    missing = set()
    for node in graph.node:
        if node.domain in _STANDARD_DOMAINS:
            if node.op_type not in ONNX_OPS and node.op_type != "If":
                missing.add(f"ai.onnx::{node.op_type}")
        elif node.domain != DOMAIN or f"{DOMAIN}::{node.op_type}" not in plugin_ops():
            missing.add(f"{node.domain}::{node.op_type}")
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                missing.update(unsupported_ops(attribute.g))
    return sorted(missing)


class TorchGraph:
    """An ONNX model loaded for torch on ``device``: ``run(feeds)`` returns the graph outputs in order."""

    def __init__(self, path: Path | onnx.ModelProto, device: str = "cpu", keep_inputs: Optional[set[str]] = None):
        model = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))
        missing = unsupported_ops(model.graph)
        if missing:
            raise UnsupportedOpError(
                f"{path} uses {', '.join(missing)}, which the torch backend cannot run. Run this model with "
                "--backend onnxruntime, or lower the portable model for torch with `planforge build --target torch`.")
        self.input_names = [i.name for i in model.graph.input]
        self.input_shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None
                                      for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        self.output_names = [o.name for o in model.graph.output]
        self._body = _Body(model.graph, device, keep=set(self.input_names) | (keep_inputs or set()))

    @torch.inference_mode()
    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return self._body.run(ChainMap(dict(feeds)))
