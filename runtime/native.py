"""The C++ runtime's generation loop (runtime/cpp) under the Python API, for models lowered onto ONNX Runtime.

On a model whose attention shares its cache buffers (``optimize``'s default ``--target onnxruntime``),
``Generator.generate`` hands the whole loop (prefill, decode, sampling, stop rules) to the C++ runtime's ONNX
Runtime backend, so no Python runs between two decode steps. It runs the same graph with the same contract and
the same sampler (tests/runtime/test_native_loop.py checks the tokens against the Python loop's); only the
loop moves. The Python loop's ~60 µs per step, most of it the interpreter's working set being evicted by each run
(docs/architecture.md), is what separated planforge's runtime from ORT-GenAI's C++ client on the same graph.

The library is built from the package's ``runtime/cpp`` sources with CMake on first use and cached under
``$PLANFORGE_CACHE_DIR`` (default ``~/.cache/planforge``)/native/<hash of the sources>; the build needs CMake, a
C++17 compiler and nlohmann-json (Debian: ``apt-get install cmake g++ nlohmann-json3-dev``), and no ONNX Runtime
headers: the library loads the onnxruntime wheel's own ``libonnxruntime.so`` at run time. Where the build is not
possible, or with ``PLANFORGE_NATIVE_LOOP=0``, the Python loop runs: the same tokens, slower per step;
``unavailable_reason()`` says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from planforge.errors import (BackendUnavailableError, CompiledModelError, InvalidGenerationConfigError,
                              InvalidPromptError, PromptTooLongError)

SOURCE = Path(__file__).resolve().parent / "cpp"
LIBRARY = "libplanforge_c.so"
# The C API's status codes (runtime/cpp/include/planforge/c_api.h).
PF_OK, PF_INVALID_CONFIG, PF_ENGINE_ERROR, PF_PROMPT_TOO_LONG, PF_INVALID_PROMPT, PF_CANCELLED = 0, 2, 5, 8, 9, 11
_ERRORS = {PF_INVALID_CONFIG: InvalidGenerationConfigError, PF_ENGINE_ERROR: CompiledModelError,
           PF_PROMPT_TOO_LONG: PromptTooLongError, PF_INVALID_PROMPT: InvalidPromptError}
TOKEN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_reasons: list[str] = []  # why the native loop is unavailable, once known


def cache_dir() -> Path:
    return Path(os.environ.get("PLANFORGE_CACHE_DIR") or Path.home() / ".cache" / "planforge") / "native"


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file() and p.suffix in {".cpp", ".hpp", ".h", ".txt"}):
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build(target: Path) -> None:
    """Builds the C API library into ``target``, atomically: a failed or interrupted build leaves nothing there."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BackendUnavailableError(f"building it needs {tool}, which is not installed "
                                          "(Debian: apt-get install cmake g++ nlohmann-json3-dev)")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"planforge: building the C++ decode loop once, into {target.parent} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent) as build:
        for command in (["cmake", "-S", str(SOURCE), "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                         "-DPLANFORGE_TESTS=OFF"],
                        ["cmake", "--build", build, "--target", "planforge_c", "-j", str(os.cpu_count() or 2)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                errors = [line for line in (done.stderr + done.stdout).splitlines() if "rror" in line]
                raise BackendUnavailableError(f"its build failed: {(errors or ['(no message)'])[0].strip()}")
        os.replace(Path(build) / LIBRARY, target)


@functools.cache
def load_library() -> Optional[ctypes.CDLL]:
    """The C API library, built first if need be; None (with ``unavailable_reason()``) where it cannot be."""
    if os.environ.get("PLANFORGE_NATIVE_LOOP", "1") == "0":
        _reasons.append("PLANFORGE_NATIVE_LOOP=0")
        return None
    target = cache_dir() / _source_hash() / LIBRARY
    try:
        if not target.is_file():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (BackendUnavailableError, OSError) as exc:
        _reasons.append(f"the C++ loop is unavailable: {exc}")
        return None
    lib.pf_last_error.restype = ctypes.c_char_p
    lib.pf_runtime_open_with.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                         ctypes.POINTER(ctypes.c_void_p)]
    i64p, intp = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int)
    lib.pf_runtime_generate.argtypes = [
        ctypes.c_void_p, i64p, intp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int,
        ctypes.c_double, ctypes.c_int, ctypes.c_uint64, i64p, ctypes.c_int, ctypes.c_int, TOKEN_CALLBACK,
        ctypes.c_void_p, i64p, intp]
    lib.pf_runtime_last_result.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                           ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
    lib.pf_runtime_free.argtypes = [ctypes.c_void_p]
    return lib


def unavailable_reason() -> str:
    return "; ".join(_reasons)


def onnxruntime_library() -> Optional[Path]:
    """The onnxruntime wheel's ``libonnxruntime.so`` (the C API the Python module does not export)."""
    import onnxruntime

    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    return found[-1] if found else None


class NativeLoop:
    """The C++ runtime over one model directory: ``generate`` as ``Generator.generate`` returns it."""

    def __init__(self, lib: ctypes.CDLL, model_dir: Path, threads: Optional[int]):
        self._lib, self._handle = lib, ctypes.c_void_p()
        library = onnxruntime_library()
        if library is None:
            raise BackendUnavailableError("the onnxruntime package has no libonnxruntime.so")
        status = lib.pf_runtime_open_with(str(model_dir).encode(), threads or 0, str(library).encode(),
                                          ctypes.byref(self._handle))
        if status != PF_OK:
            raise _ERRORS.get(status, BackendUnavailableError)(lib.pf_last_error().decode())

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.pf_runtime_free(self._handle)

    def generate(self, prompts: Sequence[Sequence[int]], config, on_token: Optional[Callable[[int, int], None]]):
        from planforge.runtime.generator import GenerationResult

        flat = np.array([t for p in prompts for t in p], np.int64)
        lengths = np.array([len(p) for p in prompts], np.intc)
        stops = np.array(config.stop_token_ids or [0], np.int64)
        n, width = len(prompts), config.max_new_tokens
        tokens, counts = np.zeros((n, width), np.int64), np.zeros(n, np.intc)
        raised: list[BaseException] = []

        def relay(row, token, _):  # an exception in the caller's callback (Ctrl-C too) stops the loop
            try:
                on_token(row, token)
                return 0
            except BaseException as exc:  # noqa: B036: re-raised below, once the C loop has returned
                raised.append(exc)
                return 1

        callback = TOKEN_CALLBACK(relay) if on_token is not None else TOKEN_CALLBACK()
        s = config.sampling
        pointer = lambda a, t: a.ctypes.data_as(ctypes.POINTER(t))  # noqa: E731
        status = self._lib.pf_runtime_generate(
            self._handle, pointer(flat, ctypes.c_int64), pointer(lengths, ctypes.c_int), n, width, int(s.do_sample),
            s.temperature, s.top_k, s.top_p, int(s.seed is not None), s.seed or 0, pointer(stops, ctypes.c_int64),
            len(config.stop_token_ids), int(config.ignore_eos), callback, None, pointer(tokens, ctypes.c_int64),
            pointer(counts, ctypes.c_int))
        if raised:
            raise raised[0]
        if status != PF_OK:
            raise _ERRORS.get(status, BackendUnavailableError)(self._lib.pf_last_error().decode())
        reasons, prefill, decode = [], ctypes.c_double(), ctypes.c_double()
        for row in range(n):
            reason = ctypes.c_char_p()
            self._lib.pf_runtime_last_result(self._handle, row, ctypes.byref(reason), ctypes.byref(prefill),
                                             ctypes.byref(decode))
            reasons.append(reason.value.decode())
        return GenerationResult(tokens=[tokens[i, :counts[i]].tolist() for i in range(n)], finish_reasons=reasons,
                                prompt_lengths=[len(p) for p in prompts], prefill_seconds=prefill.value,
                                decode_seconds=decode.value, loop="c++")


def open_loop(model_dir: Path, threads: Optional[int]) -> Optional[NativeLoop]:
    """The native loop over ``model_dir``, or None (the Python loop runs; ``unavailable_reason()`` says why)."""
    lib = load_library()
    if lib is None:
        return None
    try:
        return NativeLoop(lib, model_dir, threads)
    except BackendUnavailableError as exc:
        _reasons.append(f"the C++ loop could not open {model_dir}: {exc}")
        return None
