"""Standard ONNX ops (default domain, opset 23) in torch: the tensor, shape and arithmetic ops the
exporter and the graph passes emit.

Each function takes the node's inputs (torch tensors, ``None`` for an omitted
optional input) and its attributes as keywords, and returns a tensor or a tuple
of tensors, as ONNX defines them. ``@onnx_op`` registers it; the interpreter
(``graph.py``) refuses a node whose op is not here, by name. The neural-network
ops (attention, rotary, norms, quantization) are in ``nn_ops.py``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ONNX_OPS: dict[str, Callable] = {}
# Inputs that are shapes, axes or counts: read on the host (``_ints``), so they are never moved to the device.
HOST_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Squeeze": frozenset({1}), "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}), "TopK": frozenset({1}), "Range": frozenset({0, 1, 2}),
    "ConstantOfShape": frozenset({0}), "ReduceMax": frozenset({1}), "ReduceMin": frozenset({1}),
    "ReduceSum": frozenset({1}), "ReduceMean": frozenset({1}),
}

# TensorProto element type -> torch dtype. INT4/UINT4 weights are held unpacked, one code per int8/uint8.
TORCH_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
                9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16, 21: torch.uint8,
                22: torch.int8}


def onnx_op(*names: str):
    def register(fn: Callable) -> Callable:
        for name in names:
            assert name not in ONNX_OPS, f"{name} registered twice"
            ONNX_OPS[name] = fn
        return fn

    return register


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "MatMul": torch.matmul}.items():
    ONNX_OPS[_name] = _fn
for _name, _fn in {"Sigmoid": torch.sigmoid, "Relu": torch.relu, "Floor": torch.floor, "Neg": torch.neg,
                   "Not": torch.logical_not, "Sqrt": torch.sqrt, "Exp": torch.exp, "Tanh": torch.tanh,
                   "Abs": torch.abs, "Reciprocal": torch.reciprocal}.items():
    ONNX_OPS[_name] = _fn


@onnx_op("Mod")
def mod(a, b, fmod: int = 0):
    """fmod 0 (integers): the remainder takes the divisor's sign, as Python's %; fmod 1: C's fmod."""
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@onnx_op("Div")
def div(a, b):
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


@onnx_op("Identity")
def identity(x):
    return x


def _variadic(fn: Callable) -> Callable:
    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


ONNX_OPS["Max"], ONNX_OPS["Min"], ONNX_OPS["Sum"] = _variadic(torch.maximum), _variadic(torch.minimum), \
    _variadic(torch.add)


@onnx_op("Where")
def where(cond, a, b):
    return torch.where(cond, a, b)


@onnx_op("Clip")
def clip(x, lo=None, hi=None):
    return torch.clamp(x, min=lo, max=hi)


@onnx_op("Cast")
def cast(x, to: int, saturate: int = 1, round_mode: str = "up"):
    return x.to(TORCH_DTYPES[to])


@onnx_op("Constant")
def constant(value=None, value_float=None, value_int=None, value_floats=None, value_ints=None):
    if value is not None:
        return value
    for v, dtype in ((value_float, torch.float32), (value_int, torch.int64), (value_floats, torch.float32),
                     (value_ints, torch.int64)):
        if v is not None:
            return torch.tensor(v, dtype=dtype)
    raise ValueError("Constant without a value")


@onnx_op("Shape")
def shape(x, start: int = 0, end: int | None = None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@onnx_op("Range")
def range_(start, limit, delta):
    dtype, device = start.dtype, start.device
    start, limit, delta = start.item(), limit.item(), delta.item()
    count = max(math.ceil((limit - start) / delta), 0)  # ONNX gives an empty range where torch would raise
    return (torch.arange(count, device=device, dtype=torch.float64) * delta + start).to(dtype)


@onnx_op("Squeeze")
def squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in _ints(axes)))


@onnx_op("Unsqueeze")
def unsqueeze(x, axes):
    out_rank = x.dim() + axes.numel()
    for axis in sorted(a % out_rank for a in _ints(axes)):
        x = x.unsqueeze(axis)
    return x


@onnx_op("Reshape")
def reshape(x, shape, allowzero: int = 0):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@onnx_op("Transpose")
def transpose(x, perm=None):
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


@onnx_op("Expand")
def expand(x, shape):
    dims = _ints(shape)
    rank = max(len(dims), x.dim())
    dims = [1] * (rank - len(dims)) + dims
    current = [1] * (rank - x.dim()) + list(x.shape)
    return x.reshape(current).expand([c if d == 1 else d for c, d in zip(current, dims)])


@onnx_op("Concat")
def concat(*xs, axis: int):
    return torch.cat([x for x in xs if x is not None], dim=axis)


@onnx_op("Split")
def split(x, split=None, axis: int = 0, num_outputs: int | None = None):
    if split is not None:
        return tuple(torch.split(x, _ints(split), dim=axis))
    size = -(-x.shape[axis] // num_outputs)  # ceil: the last chunk may be smaller
    return tuple(torch.split(x, size, dim=axis))


@onnx_op("Slice")
def slice_(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise NotImplementedError("Slice with a negative step")
        index[axis] = slice(start, min(end, x.shape[axis]), step)
    return x[tuple(index)]


@onnx_op("Gather")
def gather(x, indices, axis: int = 0):
    axis %= x.dim()
    idx = torch.where(indices < 0, indices + x.shape[axis], indices)
    out = torch.index_select(x, axis, idx.reshape(-1).long())
    return out.reshape(list(x.shape[:axis]) + list(indices.shape) + list(x.shape[axis + 1:]))


@onnx_op("GatherND")
def gather_nd(x, indices, batch_dims: int = 0):
    indices = indices.long()
    batch = x.shape[:batch_dims]
    k = indices.shape[-1]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])  # (N, ...)
    flat_i = indices.reshape(flat_x.shape[0], -1, k)  # (N, L, k)
    n = torch.arange(flat_x.shape[0], device=x.device)[:, None].expand(flat_i.shape[:2])
    picked = flat_x[(n, *flat_i.unbind(-1))]  # (N, L, ...rest)
    return picked.reshape(*batch, *indices.shape[batch_dims:-1], *x.shape[batch_dims + k:])


@onnx_op("ScatterElements")
def scatter_elements(x, indices, updates, axis: int = 0, reduction: str = "none"):
    indices = torch.where(indices < 0, indices + x.shape[axis], indices).long()
    if reduction == "none":
        return x.scatter(axis, indices, updates)
    return x.scatter_reduce(axis, indices, updates, reduce={"add": "sum", "mul": "prod"}.get(reduction, reduction),
                            include_self=True)


@onnx_op("ConstantOfShape")
def constant_of_shape(shape, value=None):
    fill = value if value is not None else torch.zeros(1, dtype=torch.float32)
    return torch.full(_ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=fill.device)


@onnx_op("TopK")
def topk(x, k, axis: int = -1, largest: int = 1, sorted: int = 1):
    values, indices = torch.topk(x, int(k.reshape(-1)[0]), dim=axis, largest=bool(largest), sorted=True)
    return values, indices.to(torch.int64)


@onnx_op("Softmax")
def softmax(x, axis: int = -1):
    return torch.softmax(x, dim=axis)


def _reduce(fn: Callable) -> Callable:
    def run(x, axes=None, keepdims: int = 1, noop_with_empty_axes: int = 0):
        dims = tuple(_ints(axes)) if axes is not None and axes.numel() else tuple(range(x.dim()))
        return fn(x, dim=dims, keepdim=bool(keepdims))

    return run


ONNX_OPS["ReduceMax"] = _reduce(torch.amax)
ONNX_OPS["ReduceMin"] = _reduce(torch.amin)
ONNX_OPS["ReduceSum"] = _reduce(torch.sum)
ONNX_OPS["ReduceMean"] = _reduce(torch.mean)
