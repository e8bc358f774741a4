"""The plugin-op registry: every ``planforge::Name`` op, its version, and who implements it.

Each ``plugins/<op>/schema.py`` declares its :class:`OpSchema` values; this module
finds them (a new op is one new folder), keys them by qualified name, and
registers each with ONNX (``onnx.defs``) with type and shape inference computed
from the declared symbolic shapes. So ``onnx.checker.check_model(full_check=True)``
and ``onnx.shape_inference`` accept a lowered graph, and give its plugin outputs
real shapes.

ONNX is imported only to register; no kernel, Triton or TensorRT is loaded to list
or check ops.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from planforge.errors import PluginVersionError
from planforge.plugins import DOMAIN
from planforge.plugins._schema import OpSchema

# Attributes every plugin node carries, for TensorRT's ONNX parser: it looks a plugin up by
# op type, ``plugin_version`` and ``plugin_namespace`` when no importer owns the op type.
PLUGIN_NAMESPACE = DOMAIN
NODE_ATTRIBUTES = ("plugin_namespace", "plugin_version")
# Attributes the TensorRT graph preparation adds (graph_passes/tensorrt_prep.py): ``aot=1`` picks a QDP
# plugin's AOT implementation, and ``has_<input>=0`` marks an omitted optional input that reaches the
# plugin as a one-element placeholder (TensorRT passes a plugin every input).
AOT_ATTRIBUTE = "aot"


def presence_attribute(input_name: str) -> str:
    return f"has_{input_name}"
_ONNX_DTYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)",
                "int8": "tensor(int8)", "int32": "tensor(int32)", "int64": "tensor(int64)"}
_SHAPE_NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class PluginOp:
    schema: OpSchema
    package: str  # plugins/<package>/

    @property
    def key(self) -> str:
        return self.schema.qualified_name

    def run(self, inputs: list, attributes: dict) -> list:
        """Runs the op on torch tensors (``None`` for an omitted optional input) through
        ``torch.ops.planforge.<torch_op>``: the outputs in schema order, an aliased output being the
        (updated) input itself. ``attributes`` are the node's; the TensorRT-only ones are not passed on
        (``has_<input>=0`` turns that input into ``None``)."""
        overload, bool_args = self._torch_op
        absent = [i for i, flag in self._presence if not attributes.get(flag, 1)]
        if absent:  # a TensorRT-prepared graph: the placeholder stands for an omitted input
            inputs = [None if i in absent else value for i, value in enumerate(inputs)]
        kwargs = {**self.schema.attribute_defaults(),
                  **{k: v for k, v in attributes.items() if k not in self._not_torch_arguments}}
        for name in bool_args.intersection(kwargs):  # ONNX has no bool attributes: rolling=1 -> True
            kwargs[name] = bool(kwargs[name])
        result = overload(*inputs, **kwargs)
        produced = iter(result if isinstance(result, (tuple, list)) else ([] if result is None else [result]))
        by_name = {spec.name: value for spec, value in zip(self.schema.inputs, inputs)}
        aliases = dict(self.schema.aliases)
        return [by_name[aliases[spec.name]] if spec.name in aliases else next(produced) for spec in self.schema.outputs]

    @cached_property
    def _presence(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, presence_attribute(t.name)) for i, t in enumerate(self.schema.inputs) if t.optional)

    @cached_property
    def _not_torch_arguments(self) -> frozenset[str]:
        """Node attributes for TensorRT only: its plugin lookup, the AOT switch, the presence flags."""
        return frozenset(NODE_ATTRIBUTES) | {AOT_ATTRIBUTE} | {flag for _, flag in self._presence}

    @cached_property
    def _torch_op(self):
        """The op's torch overload and its bool arguments, looked up once (``run`` is on every step's path)."""
        import torch

        importlib.import_module(f"planforge.plugins.{self.package}")  # registers torch.ops.planforge.*
        overload = getattr(torch.ops.planforge, self.schema.torch_op).default
        return overload, frozenset(a.name for a in overload._schema.arguments if str(a.type) == "bool")

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that run this op: torch (reference on CPU, Triton on CUDA), and TensorRT where
        the op has a ``tensorrt.py`` plugin registration."""
        here = Path(__file__).parent / self.package
        return ("torch",) + (("tensorrt",) if (here / "tensorrt.py").is_file() else ())

    @property
    def tensorrt_form(self) -> str:
        """``aot`` (its Triton kernel is embedded in the engine) or ``python`` (TensorRT calls back
        into the torch op, so the engine needs Python); see plugins/_tensorrt.py."""
        return "aot" if self.schema.tensorrt_aot else "python"


@cache
def plugin_ops() -> dict[str, PluginOp]:
    """Every plugin op by qualified name (``planforge::FusedAttentionDecode``), in folder order."""
    found: dict[str, PluginOp] = {}
    package = importlib.import_module("planforge.plugins")
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not module.ispkg:
            continue
        schemas = importlib.import_module(f"planforge.plugins.{module.name}.schema")
        for value in vars(schemas).values():
            if isinstance(value, OpSchema):
                assert value.qualified_name not in found, f"{value.qualified_name} declared twice"
                assert value.torch_op, f"{value.qualified_name} names no torch op"
                found[value.qualified_name] = PluginOp(value, module.name)
    return found


def plugin_op(op_type: str) -> PluginOp:
    """The op a ``planforge``-domain node of ``op_type`` runs."""
    key = f"{DOMAIN}::{op_type}"
    ops = plugin_ops()
    if key not in ops:
        raise PluginVersionError(f"the graph uses {key}, which this planforge does not have "
                                 f"(it has {', '.join(ops)}). Upgrade planforge, or rebuild the model with this one.")
    return ops[key]


def load_tensorrt_plugins() -> dict[str, str]:
    """Registers every op's TensorRT QDP plugin (its ``tensorrt.py``) with ``tensorrt.plugin``, once per
    process; returns ``{"planforge::Name": "aot" | "python"}``. Needs TensorRT >= 10.9 (and Triton, which
    compiles the AOT kernels)."""
    from planforge.errors import BackendUnavailableError

    try:
        importlib.import_module("tensorrt.plugin")  # TensorRT's QDP module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed: {exc}. Install TensorRT >= 10.9 with its Python bindings "
            "(pip install tensorrt) on a machine with an NVIDIA GPU.") from exc
    ops = plugin_ops()
    for package in sorted({op.package for op in ops.values()}):
        importlib.import_module(f"planforge.plugins.{package}.tensorrt")
    return {key: op.tensorrt_form for key, op in ops.items()}


def opset_version() -> int:
    """The ``planforge`` opset a lowered graph imports: an op resolves to its newest version <= this."""
    return max(op.schema.version for op in plugin_ops().values())


def check_op_versions(recorded: dict[str, int]) -> None:
    """Refuses a lowered model whose plugin ops (``{"planforge::Name": version}``) differ from these."""
    ops = plugin_ops()
    for key, version in recorded.items():
        have = ops[key].schema.version if key in ops else None
        if have != version:
            installed = f"version {have}" if have is not None else "no such op"
            raise PluginVersionError(
                f"the model was lowered with {key} version {version}; this planforge has {installed}. Rebuild it "
                "with `planforge build` from this planforge, or install the planforge that built it.")


# ---- ONNX registration ---------------------------------------------------------------------------

@cache
def register_onnx_schemas() -> None:
    """Registers every plugin op with ``onnx.defs`` (once per process)."""
    from onnx import defs

    for op in plugin_ops().values():
        s = op.schema
        if defs.has(s.name, s.version, s.domain) and \
                defs.get_schema(s.name, s.version, s.domain).since_version == s.version:
            continue
        defs.register_schema(_onnx_schema(s))


def _type_vars(schema: OpSchema) -> dict[tuple[str, ...], str]:
    """One ONNX type variable per distinct dtype set: inputs sharing a set share a type (q, k, v)."""
    found: dict[tuple[str, ...], str] = {}
    for spec in schema.inputs + schema.outputs:
        found.setdefault(spec.dtypes, f"T{len(found)}")
    return found


def _onnx_schema(s: OpSchema):
    from onnx import defs

    Param, Attr = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute
    types = _type_vars(s)
    optional = defs.OpSchema.FormalParameterOption.Optional
    single = defs.OpSchema.FormalParameterOption.Single
    attr_types = {"int": defs.OpSchema.AttrType.INT, "float": defs.OpSchema.AttrType.FLOAT}
    schema = defs.OpSchema(
        s.name, s.domain, s.version, s.doc,
        inputs=[Param(t.name, types[t.dtypes], t.doc, param_option=optional if t.optional else single)
                for t in s.inputs],
        outputs=[Param(t.name, types[t.dtypes], t.doc) for t in s.outputs],
        type_constraints=[(var, [_ONNX_DTYPES[d] for d in dtypes], "") for dtypes, var in types.items()],
        attributes=[Attr(a.name, attr_types[a.type], a.doc, required=False) for a in s.attributes]
        + [Attr(name, defs.OpSchema.AttrType.STRING, "for TensorRT's plugin lookup", required=False)
           for name in NODE_ATTRIBUTES]
        + [Attr(AOT_ATTRIBUTE, defs.OpSchema.AttrType.INT, "TensorRT: 1 runs the AOT plugin", required=False)]
        + [Attr(presence_attribute(t.name), defs.OpSchema.AttrType.INT,
                f"TensorRT: 0 when {t.name} is a placeholder for the omitted input", required=False)
           for t in s.inputs if t.optional],
    )
    schema.set_type_and_shape_inference_function(lambda ctx: _infer(s, ctx))
    return schema


def _infer(s: OpSchema, ctx) -> None:
    """Output dtype: the input of the same dtype set, else the one fixed dtype. Output dims: a
    symbol bound by an input dim, or an expression of bound ints and attributes; else unknown."""
    from onnx import TensorProto, TypeProto

    bound, elem = dict(s.attribute_defaults()), {}
    for name in [a.name for a in s.attributes]:
        attr = ctx.get_attribute(name)
        if attr is not None:
            bound[name] = attr.i if attr.type == attr.INT else attr.f
    for i, spec in enumerate(s.inputs):
        if i >= ctx.get_num_inputs() or not ctx.has_input(i):
            continue
        tensor = ctx.get_input_type(i)
        if tensor is None or not tensor.HasField("tensor_type"):
            continue
        elem.setdefault(spec.dtypes, tensor.tensor_type.elem_type)
        if tensor.tensor_type.HasField("shape"):
            for symbol, dim in zip(_dims(spec.shape), tensor.tensor_type.shape.dim):
                if _SHAPE_NAME.match(symbol) and symbol not in bound:
                    bound[symbol] = dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None
    fixed = {"float32": TensorProto.FLOAT, "int8": TensorProto.INT8, "int32": TensorProto.INT32}
    for i, spec in enumerate(s.outputs):
        out = TypeProto()
        elem_type = elem.get(spec.dtypes) or (fixed[spec.dtypes[0]] if len(spec.dtypes) == 1 else 0)
        if not elem_type:
            continue
        out.tensor_type.elem_type = elem_type
        shape = out.tensor_type.shape
        for symbol in _dims(spec.shape):
            dim, value = shape.dim.add(), _evaluate(symbol, bound)
            if isinstance(value, int):
                dim.dim_value = value
            elif isinstance(value, str):
                dim.dim_param = value
        ctx.set_output_type(i, out)


def _dims(shape: str) -> list[str]:
    """``"[B, Hkv, S, D/2]"`` -> ``["B", "Hkv", "S", "D/2"]`` (commas inside parentheses kept)."""
    inner, dims, depth, current = shape.strip()[1:-1], [], 0, ""
    for ch in inner:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            dims.append(current.strip())
            current = ""
        else:
            current += ch
    return dims + ([current.strip()] if current.strip() else [])


def _evaluate(expression: str, bound: dict):
    """A dim's value: the bound symbol itself, or integer arithmetic over bound ints; None if unknown."""
    if _SHAPE_NAME.match(expression):
        return bound.get(expression)
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and isinstance(bound.get(node.id), int):
            return bound[node.id]
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            ops = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.Div: int.__floordiv__}
            if a is not None and b is not None and type(node.op) in ops and not (isinstance(node.op, ast.Div) and b == 0):
                return ops[type(node.op)](a, b)
        return None

    return value(tree)
