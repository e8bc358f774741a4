"""Options that several commands share, defined once: which backend runs a compiled model, and where."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _backend_help() -> str:
    from planforge.runtime.backends import backend_names

    return (f"Backend that runs compiled models: {', '.join(backend_names())}. Default: the one the model was built "
            "for (planforge.json target; onnxruntime for export and optimize outputs).")


BackendOption = Annotated[Optional[str], typer.Option("--backend", help=_backend_help())]
DeviceOption = Annotated[Device, typer.Option("--device", help="Device the backend runs compiled models on: cpu, or cuda (onnxruntime needs onnxruntime-gpu).")]
