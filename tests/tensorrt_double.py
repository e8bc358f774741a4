"""A recording stand-in for TensorRT's ``tensorrt.plugin`` (QDP) API, for machines without TensorRT.

It implements just what planforge's ``plugins/*/tensorrt.py`` use, following the documented
semantics, with shapes as plain ints: the decorators record each function by plugin id; a
``TensorDesc`` has ``dtype``, ``shape_expr`` (static dims know their value, as TensorRT's
``ShapeExpr.is_constant`` / ``constant_value``) and ``aliased()``. So the tests run the real
registration, shape, autotune, AOT and Python-impl functions; only TensorRT itself is absent.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections import defaultdict

import torch

DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
          torch.int32: "int32", torch.int8: "int8"}


class DataType(str):
    """``trt.float16`` and friends: compared by identity of name."""


class Dim(int):
    """A static dimension of a TensorRT shape expression."""

    @property
    def is_constant(self) -> bool:
        return True

    @property
    def constant_value(self) -> int:
        return int(self)


class TensorDesc:
    def __init__(self, shape, dtype, alias_of=None):
        self.shape_expr = tuple(Dim(d) for d in shape)
        self.dtype = dtype
        self.alias_of = alias_of

    def aliased(self):
        return TensorDesc(self.shape_expr, self.dtype, alias_of=self)


class Tensor:
    """A tensor TensorRT hands a Python plugin, here a CPU torch tensor (as_torch is patched to unwrap it)."""

    def __init__(self, value: torch.Tensor, trt_module):
        self.value = value
        self.dtype = getattr(trt_module, DTYPES[value.dtype])


class KernelLaunchParams:
    grid_x = grid_y = grid_z = block_x = 1
    shared_mem = 0


class SymInt32:
    def __init__(self, value):
        self.value = int(value)


class SymIntExprs(list):
    def __init__(self, n: int):
        super().__init__([None] * n)


class AutoTuneCombination:
    def __init__(self, io_types: str, io_formats: str, tactics=None):
        self.io_types, self.io_formats, self.tactics = io_types, io_formats, tactics


def install():
    """Puts ``tensorrt`` and ``tensorrt.plugin`` stand-ins into ``sys.modules``; returns (trt, trtp, registry)."""
    registry: dict[str, dict[str, object]] = defaultdict(dict)
    trt = types.ModuleType("tensorrt")
    for name in DTYPES.values():
        setattr(trt, name, DataType(name))
    trtp = types.ModuleType("tensorrt.plugin")

    def recorder(kind):
        def decorator(plugin_id):
            def record(fn):
                assert kind not in registry[plugin_id], f"{kind} of {plugin_id} registered twice"
                registry[plugin_id][kind] = fn
                return fn
            return record
        return decorator

    for kind in ("register", "impl", "aot_impl", "autotune"):
        setattr(trtp, kind, recorder(kind))
    trtp.TensorDesc, trtp.Tensor = TensorDesc, Tensor
    trtp.KernelLaunchParams, trtp.SymInt32, trtp.SymIntExprs = KernelLaunchParams, SymInt32, SymIntExprs
    trtp.AutoTuneCombination = AutoTuneCombination
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(shape, dtype)
    trtp.cdiv = lambda a, b: -(-a // b)
    trt.plugin = trtp
    for module in (trt, trtp):  # importlib.util.find_spec (torch._dynamo asks for tensorrt) needs one
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    sys.modules["tensorrt"], sys.modules["tensorrt.plugin"] = trt, trtp
    return trt, trtp, registry


def uninstall():
    """Removes the stand-ins and every module imported against them."""
    for name in list(sys.modules):
        if name in ("tensorrt", "tensorrt.plugin") or name == "planforge.plugins._tensorrt" or \
                (name.startswith("planforge.plugins.") and name.endswith(".tensorrt")):
            del sys.modules[name]
