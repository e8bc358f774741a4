"""The TensorRT engine of ``planforge build --target tensorrt``: its optimization profiles, its build,
and the checks an engine directory passes before it runs.

An engine directory is a compiled model directory (``planforge.json``, the tokenizer) holding the
TensorRT-prepared plugin graph (``model.onnx``, what was parsed), ``engine.plan`` and the timing
cache. Its manifest's ``tensorrt`` section records what the engine is bound to: the TensorRT
version and the GPU's compute capability it was built with (an engine runs only there), the plugin
ops with their versions and forms (AOT, or Python: such an engine needs Python to run), the PTX
ISA of the AOT kernels, and the two optimization profiles.

The profile shapes, the manifest section and every check are plain Python, tested on the CPU. The
build itself (``build_engine``) is written against the TensorRT >= 10.9 Python API, with TensorRT 11
in mind: strongly typed network, ONNX parser, two profiles, a timing cache. It has not been run on
a machine with TensorRT.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from planforge import constants
from planforge.errors import (BackendUnavailableError, CompiledModelError, EngineBuildError, EngineMismatchError,
                              PromptTooLongError)
from planforge.manifest import Manifest

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
PREFILL, DECODE = "prefill", "decode"  # the profiles, in the engine's order


@dataclass(frozen=True)
class EngineSettings:
    """The shapes the engine is built for (``build --target tensorrt`` options). The cache length is the
    lowered graph's: its layers' capacities (max_seq_len, or sinks + window when streaming)."""

    max_batch: int = 8
    opt_batch: int = 1
    max_prefill: Optional[int] = None  # tokens per sequence in one prefill; default min(2048, cache length)
    opt_prefill: Optional[int] = None  # default min(128, max_prefill)
    timing_cache: Optional[Path] = None  # read if it exists, and written back; the engine directory keeps a copy


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: dict  # input name -> (min, opt, max), each a list of ints

    @property
    def max_batch(self) -> int:
        return self.shapes[constants.INPUT_IDS][2][0]

    @property
    def max_tokens(self) -> int:
        return self.shapes[constants.INPUT_IDS][2][1]


def require_tensorrt() -> str:
    """TensorRT's version, or the error ``build --target tensorrt`` and the backend give without it."""
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError(
            "TensorRT is not installed: `pip install tensorrt` (TensorRT >= 10.9, with its Python bindings) on a "
            "machine with an NVIDIA GPU. Nothing was written.")
    import tensorrt as trt

    return trt.__version__


def cache_length(manifest: Manifest) -> int:
    """The positions every layer's cache holds (the smallest capacity, for a model with mixed layers)."""
    layers = manifest.io.get("kv_cache") or []
    if not layers:
        raise CompiledModelError("the model has no preallocated KV cache (it is not a plugin-lowered graph); build it "
                                 "with `planforge build PORTABLE -o OUT --target tensorrt`.")
    return min(layer["capacity"] for layer in layers)


def _rolling(manifest: Manifest) -> bool:
    return all(layer.get("rolling") for layer in manifest.io.get("kv_cache") or [{}])


def profiles(manifest: Manifest, settings: EngineSettings) -> list[Profile]:
    """The prefill profile (batch 1..max_batch, 1..max_prefill tokens) and the decode profile (one token)."""
    capacity = cache_length(manifest)
    max_prefill = settings.max_prefill or min(2048, capacity)
    opt_prefill = settings.opt_prefill or min(128, max_prefill)
    checks = [(settings.max_batch >= 1, f"--max-batch {settings.max_batch} must be at least 1"),
              (1 <= settings.opt_batch <= settings.max_batch,
               f"--opt-batch {settings.opt_batch} must be between 1 and --max-batch {settings.max_batch}"),
              (max_prefill >= 1, f"--max-prefill {max_prefill} must be at least 1"),
              (_rolling(manifest) or max_prefill <= capacity,
               f"--max-prefill {max_prefill} is over the model's cache of {capacity} positions"),
              (1 <= opt_prefill <= max_prefill,
               f"--opt-prefill {opt_prefill} must be between 1 and --max-prefill {max_prefill}")]
    for ok, message in checks:
        if not ok:
            raise EngineBuildError(message + ".")
    batch = (1, settings.opt_batch, settings.max_batch)
    return [Profile(name, {entry["name"]: _shape_range(entry["shape"], batch, tokens)
                           for entry in manifest.io["inputs"]})
            for name, tokens in ((PREFILL, (1, opt_prefill, max_prefill)), (DECODE, (1, 1, 1)))]


def _shape_range(shape: list, batch: tuple, tokens: tuple) -> tuple:
    dims = {"batch": batch, "sequence": tokens}
    return tuple([dims[d][i] if isinstance(d, str) else int(d) for d in shape] for i in range(3))


def engine_section(trt_version: str, capability: tuple[int, int], plugin_forms: dict, manifest: Manifest,
                   engine_profiles: list[Profile], ptx_isa: str) -> dict:
    """The manifest's ``tensorrt`` section: what the engine is bound to, and its profiles."""
    return {"engine": ENGINE_FILE, "tensorrt_version": trt_version,
            "compute_capability": f"{capability[0]}.{capability[1]}", "ptx_isa": ptx_isa, "strongly_typed": True,
            "plugins": {key: {"version": version, "form": plugin_forms[key]}
                        for key, version in manifest.plugin_ops.items()},
            "profiles": [asdict(p) for p in engine_profiles]}


def check_engine(model_dir: Path, manifest: Manifest, trt_version: str, capability: tuple[int, int]) -> Path:
    """The engine file, after checking it was built for this TensorRT and this GPU, and its plugin ops are
    the ones this planforge has. Each failure names what the engine needs and how to rebuild it."""
    from planforge.plugins.registry import check_op_versions

    section = manifest.tensorrt
    rebuild = (f"Rebuild it here: `planforge build {manifest.source.get('portable_model', 'PORTABLE_MODEL')} "
               f"-o {model_dir} --target tensorrt --force`.")
    if not section:
        raise CompiledModelError(f"{model_dir} has no TensorRT engine in its {constants.MANIFEST_FILE}. Build one "
                                 "with `planforge build PORTABLE_MODEL -o OUT --target tensorrt`.")
    engine = Path(model_dir) / section.get("engine", ENGINE_FILE)
    if not engine.is_file() or engine.stat().st_size == 0:
        raise CompiledModelError(f"{engine} is missing or empty: the engine directory is incomplete. {rebuild}")
    if section["tensorrt_version"] != trt_version:
        raise EngineMismatchError(f"{engine} was built with TensorRT {section['tensorrt_version']}; this is TensorRT "
                                  f"{trt_version}, and an engine runs only on the version that built it. {rebuild}")
    here = f"{capability[0]}.{capability[1]}"
    if section["compute_capability"] != here:
        raise EngineMismatchError(f"{engine} was built for a GPU of compute capability {section['compute_capability']}; "
                                  f"this GPU is {here}, and an engine runs only on the GPU kind it was built for. "
                                  f"{rebuild}")
    check_op_versions({key: entry["version"] for key, entry in section["plugins"].items()})
    return engine


def deserialize_failure(engine: Path, manifest: Manifest, logged: list[str]) -> EngineMismatchError:
    """TensorRT returned no engine: name the plugin ops it names in its log (all of them if none), with
    their versions and how planforge registers them."""
    plugins = manifest.tensorrt["plugins"]
    named = [key for key in plugins if any(key.split("::")[1] in line for line in logged)] or list(plugins)
    listed = ", ".join(f"{key} v{plugins[key]['version']} ({plugins[key]['form']})" for key in named)
    detail = f" TensorRT said: {logged[-1]}" if logged else ""
    return EngineMismatchError(
        f"TensorRT could not deserialize {engine}: a plugin it uses is not registered, or the file is corrupt. "
        f"It needs {listed}. The tensorrt backend registers planforge's plugins first "
        "(planforge.plugins.registry.load_tensorrt_plugins()); another process must import them the same way "
        f"before deserializing.{detail}")


def check_prompt(engine_profiles: list[dict], batch: int, tokens: int) -> None:
    """Refuses a step outside the profile that would run it (prefill for several tokens, decode for one)."""
    profile = Profile(**engine_profiles[0 if tokens > 1 else 1])
    if batch > profile.max_batch or tokens > profile.max_tokens:
        raise PromptTooLongError(
            f"this step is {batch} sequence(s) x {tokens} token(s); the engine's {profile.name} profile takes at most "
            f"{profile.max_batch} x {profile.max_tokens}. Use a shorter prompt or a smaller batch, or rebuild with "
            "larger --max-batch / --max-prefill.")


# ---- the build: TensorRT API ---------------------------------------------------------------------

def build_engine(directory: Path, manifest: Manifest, settings: EngineSettings) -> dict:
    """Parses ``directory/model.onnx`` into a strongly typed network and writes ``engine.plan`` and the
    timing cache there; returns the manifest's ``tensorrt`` section. Written against TensorRT's
    documented API (>= 10.9); not run here."""
    import tensorrt as trt
    import torch

    from planforge.plugins.aot import PTX_ISA
    from planforge.plugins.registry import load_tensorrt_plugins

    forms = load_tensorrt_plugins()
    engine_profiles = profiles(manifest, settings)
    logger = _CollectingLogger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(Path(directory) / constants.MODEL_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    for profile in engine_profiles:
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            optimization.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization)
    cached = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build the engine: {'; '.join(logger.errors[-3:]) or 'no reason given'}")
    (Path(directory) / ENGINE_FILE).write_bytes(bytes(serialized))
    timing = bytes(config.get_timing_cache().serialize())
    (Path(directory) / TIMING_CACHE_FILE).write_bytes(timing)
    if settings.timing_cache:
        settings.timing_cache.write_bytes(timing)
    capability = torch.cuda.get_device_capability()
    return engine_section(trt.__version__, capability, forms, manifest, engine_profiles,
                          f"{PTX_ISA // 10}.{PTX_ISA % 10}")


class _CollectingLogger:
    """A TensorRT logger that keeps the errors (to name a missing plugin) and prints warnings."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(msg)
                if severity <= trt.ILogger.Severity.WARNING:
                    print(f"[TensorRT] {msg}")

        return Logger()
