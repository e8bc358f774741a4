"""What the TensorRT plugin tests share: the ``tensorrt_double`` stand-in with planforge's plugins
registered on it (the ``trt_api`` fixture), an AOT payload as a plugin's ``@aot_impl`` returns it, the
checks every payload passes, a recorder for the Python launchers' kernel launches, and a launch through
the CUDA driver as TensorRT makes it."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import tensorrt_double
from planforge.plugins.registry import load_tensorrt_plugins


@pytest.fixture(scope="module")
def trt_api():
    trt, trtp, registry = tensorrt_double.install()
    try:
        forms = load_tensorrt_plugins()
        glue = importlib.import_module("planforge.plugins._tensorrt")
        yield trt, trtp, registry, forms, glue
    finally:
        tensorrt_double.uninstall()


class LaunchRecorder:
    """Stands in for a @triton.jit kernel in a Python launcher: records the grid and arguments."""

    def __init__(self, real):
        self.arg_names = list(real.arg_names)
        self.calls = []

    @property
    def fn(self):
        return self

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, dict(zip(self.arg_names, args)), kwargs))
        return launch


def aot_payload(registry, key, descs, attributes, tactic):
    fn = registry[key]["aot_impl"]
    kwargs = dict(attributes, outputs=())
    if "tactic" in inspect.signature(fn).parameters:
        kwargs["tactic"] = tactic
    name, ptx, launch, extras = fn(*descs, **kwargs)
    return name, ptx, (launch.grid_x, launch.grid_y, launch.grid_z), launch, [e.value for e in extras]


def check_payload(aot, name, ptx, n_tensors, n_scalars):
    assert name in ptx
    assert len(aot.ptx_params(ptx, name)) == n_tensors + n_scalars  # exactly what TensorRT passes
    assert aot.ptx_target(ptx) == "sm_90a" and aot.ptx_isa(ptx) == "8.7"
    aot.ptxas_check(ptx)


def grid3(grid):
    return tuple(grid) + (1,) * (3 - len(grid))


def driver_launch(ptx: str, name: str, launch, args: list) -> None:
    """cuModuleLoadData + cuLaunchKernel through libcuda: grid, block and shared memory from the plugin's launch
    parameters, and exactly ``args`` (the inputs, the extra scalars, the outputs), as a TensorRT AOT plugin runs."""
    import ctypes

    cuda = ctypes.CDLL("libcuda.so.1")
    module, function = ctypes.c_void_p(), ctypes.c_void_p()
    assert cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx.encode() + b"\0")) == 0
    assert cuda.cuModuleGetFunction(ctypes.byref(function), module, name.encode()) == 0
    values = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int32(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    status = cuda.cuLaunchKernel(function, launch.grid_x, launch.grid_y, launch.grid_z, launch.block_x, 1, 1,
                                 launch.shared_mem, stream, params, None)
    assert status == 0, f"cuLaunchKernel returned {status}"
    torch.cuda.synchronize()
    cuda.cuModuleUnload(module)
