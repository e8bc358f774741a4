"""``@register_backend`` and ``open_backend``: which backend runs a compiled model.

Each module in ``runtime/backends/`` (other than this one and ``base``) defines one
backend class and registers it under its name; the modules are imported on first
use, so adding a backend is one file. A backend declares the manifest targets it
runs (``portable``: the standard-op graph every backend must accept or refuse by
name; ``onnxruntime``: lowered onto ONNX Runtime's contrib kernels; later
``torch`` and ``tensorrt``), the devices it drives, and the modules it needs, so
that a wrong choice fails with a specific error before anything is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from planforge.errors import BackendMismatchError, BackendUnavailableError, UnknownBackendError
from planforge.manifest import Manifest

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    cls: type
    targets: tuple[str, ...]  # manifest targets this backend runs
    default_for: tuple[str, ...]  # targets it is chosen for when no --backend is given
    devices: tuple[str, ...]
    requires: tuple[str, ...]  # importable modules it needs
    install: str  # how to get them


_REGISTRY: dict[str, BackendSpec] = {}
_NOT_BACKENDS = {"base", "registry", "in_place"}  # helpers, not backends


def register_backend(name: str, *, targets: tuple[str, ...], default_for: tuple[str, ...] = (),
                     devices: tuple[str, ...] = ("cpu",), requires: tuple[str, ...] = (),
                     install: str = "") -> Callable[[type], type]:
    def register(cls: type) -> type:
        assert name not in _REGISTRY or _REGISTRY[name].cls is cls, f"backend {name} registered twice"
        cls.name = name
        _REGISTRY[name] = BackendSpec(name, cls, tuple(targets), tuple(default_for), tuple(devices),
                                      tuple(requires), install)
        return cls

    return register


def _discover() -> None:
    package = importlib.import_module("planforge.runtime.backends")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_BACKENDS:
            importlib.import_module(f"planforge.runtime.backends.{module.name}")


def backends() -> dict[str, BackendSpec]:
    """Every registered backend by name, in registration order."""
    _discover()
    return dict(_REGISTRY)


def backend_names() -> list[str]:
    return list(backends())


def _spec_for(manifest: Manifest, model_dir: Path, backend: Optional[str]) -> BackendSpec:
    specs = backends()
    if backend is None:
        for spec in specs.values():
            if manifest.target in spec.default_for:
                return spec
        raise BackendMismatchError(f"{model_dir} was built for target {manifest.target!r}, which no installed "
                                   f"backend runs (backends: {', '.join(specs)}).")
    if backend not in specs:
        raise UnknownBackendError(f"unknown backend {backend!r}; choose one of {', '.join(specs)}.")
    spec = specs[backend]
    if manifest.target not in spec.targets:
        runs = [s.name for s in specs.values() if manifest.target in s.targets]
        raise BackendMismatchError(
            f"{model_dir} was built for target {manifest.target!r}; the {backend} backend runs "
            f"{', '.join(spec.targets)} models. Use --backend {runs[0] if runs else '…'}, or optimize the "
            "portable model for this backend.")
    return spec


def open_backend(model_dir: str | Path, backend: Optional[str] = None, device: str = "cpu", **options):
    """Loads a compiled model on ``backend`` (default: the one its manifest target names) on ``device``.

    ``options`` are backend-specific (ONNX Runtime: ``threads``).
    """
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    spec = _spec_for(manifest, model_dir, backend)
    if device not in DEVICES:
        raise BackendUnavailableError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if device not in spec.devices:
        raise BackendUnavailableError(f"the {spec.name} backend does not run on {device}; it runs on "
                                      f"{', '.join(spec.devices)}.")
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"the {spec.name} backend needs {', '.join(missing)}, which is not installed: "
                                      f"{spec.install}")
    return spec.cls(model_dir, manifest, device=device, **options)
