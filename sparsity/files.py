"""Safetensors reads and atomic writes shared by the importance and predictor files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from planforge.errors import OutputExistsError


def check_output_file(path: Path, force: bool) -> Path:
    """Refuses to overwrite ``path`` unless ``force``; returns it absolute."""
    path = Path(path).absolute()
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory. Pass a file path to -o.")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists. Choose another -o, or pass --force to replace it.")
    return path


def save_safetensors_atomic(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Writes a safetensors file into a temporary sibling and renames it into place."""
    from safetensors.numpy import save_file

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_safetensors(path: Path, missing: Exception, unreadable: Callable[[Exception], Exception]
                     ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of a safetensors file; raises ``missing`` when there is no such file and
    ``unreadable(exc)`` when it cannot be read as safetensors."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise missing
    try:
        with safe_open(str(path), framework="np") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable(exc) from None
