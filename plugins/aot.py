"""Ahead-of-time kernel payloads: a Triton kernel compiled to PTX (and cubin) for one GPU target.

A TensorRT QDP plugin's ``@aot_impl`` hands TensorRT one kernel as PTX, with its launch
grid and the extra scalar arguments, and TensorRT embeds it in the engine, so the engine
runs from C++ with no Python. TensorRT launches it with the tensors in a fixed order:
the plugin's inputs, then the extra scalars, then its outputs. Each AOT-capable op has a
Triton entry point (``*_entry`` in its ``kernel.py``) in that order, calling the same
``@triton.jit`` body as the Python launcher, so the two cannot drift apart.

Triton (>= 3.3) appends hidden pointer parameters to every kernel (global and profile
scratch) that its own launcher fills and TensorRT does not know about. A kernel that uses
no scratch never reads them, so :func:`compile_entry` drops them from the PTX entry and
refuses a kernel that does read them. What reaches TensorRT then has exactly the
parameters TensorRT passes; :func:`ptx_params` and :func:`ptxas_check` let CI verify that.

Triton compiles for a GPU target without a GPU (``GPUTarget("cuda", 90, 32)``), so all of
this runs on the CPU-only CI machines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from planforge.errors import PlanforgeError
from planforge.plugins._triton import require_triton

SM90 = 90  # H100 / H200: the GPUs the TensorRT target is built for
# Dynamic shared memory a kernel may take without cuFuncSetAttribute: the documented QDP
# launch parameters carry a size only, so a payload stays within the default limit.
SHARED_LIMIT = 48 * 1024
# Pointers TensorRT hands a plugin are allocations (256-byte aligned), so the entry points
# are compiled with 16-byte divisibility on every pointer, as Triton's own launcher would
# specialize for torch allocations; this is what lets loads vectorize.
POINTER_ALIGN = 16
# PTX ISA 8.7 (CUDA 12.8): the driver JIT-compiles a payload's PTX when the engine loads, so the ISA
# must be one the deployment driver knows. TensorRT 10.9+ runs on CUDA 12.8+ and 13.x drivers;
# Triton alone would write the newest ISA of its bundled ptxas (9.4 with Triton 3.9).
PTX_ISA = 87


class AotCompileError(PlanforgeError):
    """A kernel cannot be turned into a TensorRT AOT payload (scratch memory, shared memory, ptxas)."""


@dataclass(frozen=True)
class Payload:
    name: str  # the PTX entry's name, which TensorRT looks up
    ptx: str
    cubin: bytes
    num_warps: int
    shared: int  # bytes of dynamic shared memory
    arch: int

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def compile_entry(fn, signature: dict[str, str], constexprs: dict[str, object], *, num_warps: int = 4,
                  num_stages: int = 3, arch: int = SM90) -> Payload:
    """Compiles ``fn`` (a ``@triton.jit`` entry point) for ``sm_<arch>``.

    ``signature`` gives every runtime parameter's Triton type (``"*fp16"``, ``"i32"``) in the
    kernel's order; ``constexprs`` the compile-time ones."""
    triton = require_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    full = {name: signature.get(name, "constexpr") for name in names}
    missing = [n for n in names if full[n] == "constexpr" and n not in constexprs]
    if missing:
        raise AotCompileError(f"{fn.__name__}: no type or value for {', '.join(missing)}")
    pointers = [i for i, n in enumerate(names) if full[n].startswith("*")]
    source = ASTSource(fn=fn, signature=full, constexprs=dict(constexprs),
                       attrs={(i,): [["tt.divisibility", POINTER_ALIGN]] for i in pointers})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True,
                                       "ptx_version": PTX_ISA})
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise AotCompileError(f"{fn.__name__} needs Triton scratch memory, which a TensorRT AOT plugin cannot supply")
    if meta.shared > SHARED_LIMIT:
        raise AotCompileError(f"{fn.__name__} needs {meta.shared} bytes of shared memory, over the "
                              f"{SHARED_LIMIT}-byte default an AOT launch gets")
    runtime = sum(1 for n in names if full[n] != "constexpr")
    ptx = drop_hidden_params(compiled.asm["ptx"], meta.name, keep=runtime)
    return Payload(meta.name, ptx, compiled.asm["cubin"], meta.num_warps, meta.shared, arch)


_ENTRY = re.compile(r"\.entry\s+(?P<name>\w+)\s*\((?P<params>[^)]*)\)", re.S)


def ptx_params(ptx: str, name: str) -> list[str]:
    """The parameter names of PTX entry ``name``, in order."""
    for match in _ENTRY.finditer(ptx):
        if match.group("name") == name:
            return re.findall(r"(\w+_param_\d+)", match.group("params"))
    raise AotCompileError(f"no PTX entry named {name}")


def drop_hidden_params(ptx: str, name: str, keep: int) -> str:
    """The PTX with entry ``name`` cut to its first ``keep`` parameters; the dropped ones must be unread."""
    match = next((m for m in _ENTRY.finditer(ptx) if m.group("name") == name), None)
    if match is None:
        raise AotCompileError(f"no PTX entry named {name}")
    declarations = [d.strip() for d in match.group("params").split(",") if d.strip()]
    if len(declarations) < keep:
        raise AotCompileError(f"{name} has {len(declarations)} PTX parameters, fewer than its {keep} arguments")
    for dropped in declarations[keep:]:
        param = re.search(r"(\w+_param_\d+)", dropped).group(1)
        if re.search(rf"\[{param}\b", ptx):
            raise AotCompileError(f"{name} reads its hidden parameter {param}; TensorRT would not pass it")
    start, end = match.span("params")
    return ptx[:start] + "\n\t" + ",\n\t".join(declarations[:keep]) + "\n" + ptx[end:]


def ptxas() -> str | None:
    """A ``ptxas`` that reads Triton's PTX: the one bundled with Triton (the toolkit's may be older
    than the PTX ISA Triton writes), else the first on PATH."""
    try:
        triton = require_triton()
    except ImportError:
        triton = None
    if triton is not None:
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("ptxas")


def ptx_isa(ptx: str) -> str:
    """The PTX ISA version the payload needs (``.version 9.4``): the driver that JIT-compiles it
    at engine load must know it."""
    match = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    return match.group(1) if match else "unknown"


def ptx_target(ptx: str) -> str:
    """The PTX's ``.target`` (``sm_90a``: Triton writes Hopper's arch-specific target)."""
    match = re.search(r"^\.target\s+(\w+)", ptx, re.M)
    if match is None:
        raise AotCompileError("the PTX names no .target")
    return match.group(1)


def ptxas_check(ptx: str, arch: int = SM90) -> None:
    """Assembles ``ptx`` for its own ``.target``, which must be ``sm_<arch>`` (or its ``a`` variant);
    raises with ptxas's message if it refuses."""
    target = ptx_target(ptx)
    if target not in (f"sm_{arch}", f"sm_{arch}a"):
        raise AotCompileError(f"the PTX targets {target}, not sm_{arch}")
    binary = ptxas()
    if binary is None:
        raise AotCompileError("ptxas is not installed (it ships with `pip install triton` and the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        result = subprocess.run([binary, f"-arch={target}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise AotCompileError(f"ptxas refused the PTX for {target}: {result.stderr.strip()}")
