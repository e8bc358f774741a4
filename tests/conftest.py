"""Shared pytest setup.

- GPU tests skip, with the reason, where CUDA is absent.
- ``tiny_model`` builds small random-initialized models of every supported
  family (with a byte-level BPE tokenizer) and exports them once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import cuda_available, save_random_model


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on the device machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, dtype="fp32") -> (source HF dir, exported dir), built once per session."""
    from planforge.exporter.api import ExportOptions, export

    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(family: str, dtype: str = "fp32"):
        if (family, dtype) not in cache:
            root = tmp_path_factory.mktemp(f"{family}_{dtype}")
            source = save_random_model(family, root / "hf")
            export(str(source), root / "onnx", ExportOptions(dtype=dtype))
            cache[(family, dtype)] = (source, root / "onnx")
        return cache[(family, dtype)]

    return get


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(directory) -> the transformers model in fp32, eval mode, cached."""
    cache = {}

    def get(directory: Path):
        if directory not in cache:
            import torch
            from transformers import AutoModelForCausalLM

            cache[directory] = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        return cache[directory]

    return get


@pytest.fixture(scope="session")
def make_random_model():
    """make_random_model(family, directory, seed=0, **config_overrides) -> directory with weights and tokenizer."""
    return save_random_model
