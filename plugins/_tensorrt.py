"""What every op's ``tensorrt.py`` shares: shapes from the schema, dtypes, launch parameters, and
the Python implementation for ops whose work is more than one kernel.

Written against TensorRT's documented ``tensorrt.plugin`` (QDP) API, TensorRT >= 10.9 with
TensorRT 11 in mind; never run against TensorRT here (it cannot be installed on planforge's
machines). ``tests/plugins/test_tensorrt_plugins.py`` drives these functions through a
recording stand-in of that API, with real Triton compiles.

Two forms of plugin, chosen per op:

- **AOT** (``@trtp.aot_impl``): one Triton kernel compiled to PTX (``plugins/aot.py``), embedded
  in the engine; the engine then runs from C++ with no Python. TensorRT launches one kernel per
  plugin, so this is for the ops whose implementation is one launch: ``KVCacheUpdate``,
  ``QuikQuantize``, ``QuikMatMul``, the attention ops in a one-launch form (decode without its
  split-K merge, prefill reading through pointers rather than host-made TMA descriptors), and the
  one-launch steps of the sparse ops (``SparseMLPGateUp``/``SparseMLPDown``,
  ``SparseHeadsQProj``/``SparseHeadsAttend``/``SparseHeadsOProj``).
- **Python** (``@trtp.impl``): the op's torch implementation (its Triton kernels on CUDA) runs on
  TensorRT's stream. Every op has one; it is the only form of ``SparseMLP`` (zeroed float32
  accumulator, atomics, cast) and ``SparseHeadsAttention`` (projection, attention, output
  projection, sum), which launch several kernels. The TensorRT graph preparation splits those two
  into their steps, so a prepared graph has AOT plugins only; ``build --target tensorrt`` records
  each op's form in the manifest.

TensorRT passes a plugin every input, so an omitted optional input of the ONNX contract
reaches the plugin as a one-element placeholder with ``has_<input>=0`` (the TensorRT graph
preparation in ``graph_passes/tensorrt_prep.py`` adds both).
"""

from __future__ import annotations

import ast
import contextlib

import tensorrt as trt
import tensorrt.plugin as trtp

from planforge.plugins._schema import OpSchema
from planforge.plugins.registry import _dims

# Triton pointer types of the tensors TensorRT hands a plugin.
TRITON_TYPES = {trt.float16: "fp16", trt.bfloat16: "bf16", trt.float32: "fp32", trt.int32: "i32", trt.int8: "i8"}
FLOAT_FORMATS = "FP16|BF16"  # the Triton kernels' activation dtypes (float32 runs the torch reference)
_FIXED = {"float32": "FP32", "int32": "INT32", "int8": "INT8"}


def pointer(desc) -> str:
    return "*" + TRITON_TYPES[desc.dtype]


def type_combination(schema: OpSchema) -> str:
    """The autotune type string: inputs then outputs, float tensors FP16 or BF16 together."""
    specs = schema.inputs + schema.outputs
    return ", ".join(FLOAT_FORMATS if len(s.dtypes) > 1 else _FIXED[s.dtypes[0]] for s in specs)


def static(dim, what: str) -> int:
    """A dimension the kernel is compiled for (head dim, hidden size), which must be fixed in the network."""
    if isinstance(dim, int):
        return dim
    if not dim.is_constant:
        raise ValueError(f"{what} must be a static dimension for the AOT kernel")
    return int(dim.constant_value)


def cdiv(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return trtp.cdiv(a, b)


def contiguous_strides(shape) -> list:
    """Element strides of a row-major tensor (TensorRT's LINEAR format) of ``shape``."""
    strides, step = [], 1
    for dim in reversed(list(shape)[1:]):
        step = dim * step
        strides.append(step)
    return list(reversed(strides)) + [1]


def launch(payload, grid) -> "trtp.KernelLaunchParams":
    params = trtp.KernelLaunchParams()
    grid = list(grid) + [1] * (3 - len(grid))
    params.grid_x, params.grid_y, params.grid_z = grid
    params.block_x = payload.block_x
    params.shared_mem = payload.shared
    return params


def scalars(values) -> "trtp.SymIntExprs":
    """The kernel's extra int32 arguments, after the inputs and before the outputs."""
    exprs = trtp.SymIntExprs(len(values))
    for i, value in enumerate(values):
        exprs[i] = trtp.SymInt32(value)
    return exprs


def output_descs(schema: OpSchema, inputs, attributes: dict) -> tuple:
    """The outputs' descriptors from the schema's symbolic shapes: aliased outputs alias their input,
    a float output takes the dtype of the inputs of its dtype set, a fixed one its dtype."""
    by_name = {spec.name: desc for spec, desc in zip(schema.inputs, inputs)}
    bound = {**schema.attribute_defaults(), **attributes}
    for spec, desc in zip(schema.inputs, inputs):
        for symbol, dim in zip(_dims(spec.shape), desc.shape_expr):
            if symbol.isidentifier() and symbol not in bound:
                bound[symbol] = dim
    aliases = dict(schema.aliases)
    fixed = {"float32": trt.float32, "int32": trt.int32, "int8": trt.int8}
    outputs = []
    for spec in schema.outputs:
        if spec.name in aliases:
            outputs.append(by_name[aliases[spec.name]].aliased())
            continue
        like = next((by_name[s.name] for s in schema.inputs if s.dtypes == spec.dtypes), None)
        dtype = like.dtype if like is not None and len(spec.dtypes) > 1 else fixed[spec.dtypes[0]]
        outputs.append(trtp.from_shape_expr(tuple(_evaluate(d, bound) for d in _dims(spec.shape)), dtype=dtype))
    return tuple(outputs)


def _evaluate(expression: str, bound: dict):
    """A schema dimension over bound values (ints or TensorRT shape expressions): + - * and floor /."""
    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return bound[node.id]
        a, b = value(node.left), value(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        return a // b

    return value(ast.parse(expression, mode="eval").body)


def run_torch_op(schema: OpSchema, inputs, attributes: dict, outputs, stream: int) -> None:
    """A Python plugin's body: the op's torch implementation on TensorRT's stream, written into
    TensorRT's output buffers (an aliased output is its input, already updated in place)."""
    import torch

    from planforge.plugins.registry import plugin_op

    tensors = [as_torch(t) for t in inputs]  # placeholders too: run() drops those whose has_<input> is 0
    on_stream = torch.cuda.stream(torch.cuda.ExternalStream(stream)) if torch.cuda.is_available() else contextlib.nullcontext()
    with on_stream:
        results = plugin_op(schema.name).run(tensors, attributes)
        for result, out in zip(results, outputs):
            target = as_torch(out)
            if target.data_ptr() != result.data_ptr():
                target.copy_(result)


def as_torch(tensor):
    """A torch view of a TensorRT tensor (``__cuda_array_interface__``; bfloat16, which that
    interface cannot name, through an int16 view)."""
    import torch

    if tensor.dtype == trt.bfloat16:
        interface = dict(tensor.__cuda_array_interface__, typestr="<i2")
        return torch.as_tensor(_Interface(interface), device="cuda").view(torch.bfloat16)
    return torch.as_tensor(tensor, device="cuda")


class _Interface:
    def __init__(self, interface: dict):
        self.__cuda_array_interface__ = interface

