"""The backend registry: which backend opens a compiled model, and every wrong choice as one specific error."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from planforge.errors import BackendMismatchError, BackendUnavailableError, UnknownBackendError
from planforge.runtime.backends import Backend, backend_names, backends, open_backend, register_backend
from planforge.runtime.backends import registry


def _retarget(compiled, tmp_path, target):
    model = tmp_path / f"built_for_{target}"
    shutil.copytree(compiled, model)
    manifest = json.loads((model / "planforge.json").read_text())
    manifest["target"] = target
    (model / "planforge.json").write_text(json.dumps(manifest))
    return model


@pytest.fixture
def scratch_backend():
    """Registers backends for one test and removes them afterwards."""
    added = []

    def register(name, **spec):
        @register_backend(name, **spec)
        class Scratch(Backend):
            def __init__(self, model_dir, manifest, device="cpu"):
                self.model_dir, self.manifest, self.device = model_dir, manifest, device

        added.append(name)
        return Scratch

    yield register
    for name in added:
        registry._REGISTRY.pop(name)


def test_onnxruntime_is_registered_and_opens_portable_models(tiny_model):
    assert "onnxruntime" in backend_names()
    spec = backends()["onnxruntime"]
    assert {"portable", "onnxruntime"} <= set(spec.targets) and spec.default_for == ("portable", "onnxruntime")
    backend = open_backend(tiny_model("llama")[1])
    assert backend.name == "onnxruntime" and backend.describe() == "onnxruntime-cpu"
    logits = backend.prefill_logits(np.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, backend.manifest.dims.vocab_size)


def test_the_manifest_target_picks_the_backend(tiny_model, tmp_path, scratch_backend):
    scratch = scratch_backend("scratch", targets=("scratch",), default_for=("scratch",))
    model = _retarget(tiny_model("llama")[1], tmp_path, "scratch")
    assert isinstance(open_backend(model), scratch)  # no --backend: the one the model was built for
    with pytest.raises(BackendMismatchError, match=r"built for target 'scratch'.*--backend scratch"):
        open_backend(model, backend="onnxruntime")


def test_unknown_backend_names_the_choices(tiny_model):
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'tensorrtx'; choose one of .*onnxruntime"):
        open_backend(tiny_model("llama")[1], backend="tensorrtx")


def test_a_backend_that_is_not_installed_says_how_to_install_it(tiny_model, scratch_backend):
    scratch_backend("needs_missing", targets=("portable",), requires=("planforge_no_such_module",),
                    install="`pip install planforge-no-such-module`.")
    with pytest.raises(BackendUnavailableError, match=r"needs planforge_no_such_module.*pip install"):
        open_backend(tiny_model("llama")[1], backend="needs_missing")


def test_a_target_no_backend_runs_is_refused(tiny_model, tmp_path):
    # tensorrt has its backend now (it refuses the CPU): a target nothing registers stands in for it here
    with pytest.raises(BackendMismatchError, match="built for target 'openvino', which no installed backend runs"):
        open_backend(_retarget(tiny_model("llama")[1], tmp_path, "openvino"))
    with pytest.raises(BackendUnavailableError, match="the tensorrt backend does not run on cpu"):
        open_backend(_retarget(tiny_model("llama")[1], tmp_path, "tensorrt"))


def test_device_errors(tiny_model):
    with pytest.raises(BackendUnavailableError, match="unknown device 'tpu'"):
        open_backend(tiny_model("llama")[1], device="tpu")


@pytest.mark.parametrize("args, message", [
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--device", "cuda"], "CUDAExecutionProvider"),
])
def test_cli_refuses_in_one_line(tiny_model, tmp_path, args, message):
    if "cuda" in args:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this onnxruntime has CUDA")
    for command in (["run", "--prompt", "hi"], ["eval", "--ppl", str(tmp_path / "x.txt")]):
        (tmp_path / "x.txt").write_text("hello world " * 20)
        proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", command[0], str(tiny_model("llama")[1]),
                               *command[1:], *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
