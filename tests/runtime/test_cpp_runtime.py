"""The embeddable C++ runtime's backend-independent core (runtime/cpp): its googletest suite, and the C API's
sampler against Python's on the same logits and seed (the two must pick the same tokens).

Builds with CMake into a temporary directory; needs a C++17 compiler, CMake, googletest and nlohmann-json
(.ci/run installs Debian's libgtest-dev and nlohmann-json3-dev); skips, saying which is missing, without them.
"""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from planforge.runtime.sampling import Sampler, SamplingConfig

SOURCE = Path(__file__).resolve().parents[2] / "runtime" / "cpp"
PF_OK, PF_MANIFEST_ERROR, PF_INVALID_CONFIG = 0, 1, 2
PF_ENGINE_ERROR, PF_ENGINE_MISMATCH, PF_BACKEND_UNAVAILABLE = 5, 6, 10


def _missing() -> str:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for header, package in (("/usr/include/gtest/gtest.h", "libgtest-dev"),
                            ("/usr/include/nlohmann/json.hpp", "nlohmann-json3-dev")):
        if not Path(header).is_file():
            return f"{header} is missing (Debian: apt-get install {package})"
    return ""


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    if _missing():
        pytest.skip(f"the C++ runtime core needs its toolchain: {_missing()}")
    out = tmp_path_factory.mktemp("cpp_build")
    for command in (["cmake", "-S", str(SOURCE), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release"],
                    ["cmake", "--build", str(out), "-j2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def lib(build):
    c = ctypes.CDLL(str(build / "libplanforge_c.so"))
    c.pf_last_error.restype = ctypes.c_char_p
    c.pf_sampler_new.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_int, ctypes.c_double, ctypes.c_int,
                                 ctypes.c_uint64, ctypes.POINTER(ctypes.c_void_p)]
    c.pf_sampler_sample.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_int64)]
    c.pf_sampler_free.argtypes = [ctypes.c_void_p]
    c.pf_manifest_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    c.pf_manifest_dims.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_int)] * 3
    c.pf_manifest_free.argtypes = [ctypes.c_void_p]
    c.pf_runtime_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    c.pf_plugin_op_version.argtypes = [ctypes.c_char_p]
    return c


def test_the_core_unit_tests_pass(build):
    done = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "100% tests passed" in done.stdout


@pytest.mark.parametrize("config", [
    SamplingConfig(do_sample=False),
    SamplingConfig(do_sample=True, temperature=0.7, seed=0),
    SamplingConfig(do_sample=True, temperature=1.3, top_k=5, seed=1),
    SamplingConfig(do_sample=True, top_p=0.9, seed=12345),
    SamplingConfig(do_sample=True, temperature=0.8, top_k=20, top_p=0.8, seed=2**40 + 5),
])
def test_the_c_sampler_picks_pythons_tokens(lib, config):
    handle = ctypes.c_void_p()
    assert lib.pf_sampler_new(int(config.do_sample), config.temperature, config.top_k, config.top_p,
                              int(config.seed is not None), config.seed or 0, ctypes.byref(handle)) == PF_OK
    python = Sampler(config)
    rng = np.random.default_rng(7)
    try:
        for _ in range(60):  # 60 steps of a batch of 3 over 257 tokens, logits spread like a model's
            logits = (rng.standard_normal((3, 257)) * 3).astype(np.float32)
            tokens = np.zeros(3, np.int64)
            assert lib.pf_sampler_sample(handle, logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 3, 257,
                                         tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))) == PF_OK
            np.testing.assert_array_equal(tokens, python(logits))
    finally:
        lib.pf_sampler_free(handle)


def test_the_c_api_reads_a_compiled_models_manifest(lib, tiny_model):
    from planforge.manifest import Manifest

    compiled = tiny_model("llama")[1]
    handle = ctypes.c_void_p()
    assert lib.pf_manifest_load(str(compiled).encode(), ctypes.byref(handle)) == PF_OK, lib.pf_last_error()
    layers, vocab, max_seq_len = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    assert lib.pf_manifest_dims(handle, ctypes.byref(layers), ctypes.byref(vocab), ctypes.byref(max_seq_len)) == PF_OK
    d = Manifest.load(compiled).dims
    assert (layers.value, vocab.value, max_seq_len.value) == (d.num_layers, d.vocab_size, d.max_seq_len)
    lib.pf_manifest_free(handle)


def test_the_c_api_reports_errors_as_codes_and_one_line(lib, tmp_path):
    handle = ctypes.c_void_p()
    assert lib.pf_sampler_new(1, 0.0, 0, 1.0, 1, 0, ctypes.byref(handle)) == PF_INVALID_CONFIG
    assert lib.pf_last_error().decode().startswith("temperature must be a finite number > 0")
    assert lib.pf_manifest_load(str(tmp_path).encode(), ctypes.byref(handle)) == PF_MANIFEST_ERROR
    assert lib.pf_last_error().decode() == (f"{tmp_path}/planforge.json does not exist: {tmp_path} is not a compiled "
                                            "model. Run `planforge export`.")
    (tmp_path / "planforge.json").write_text("{broken")
    assert lib.pf_manifest_load(str(tmp_path).encode(), ctypes.byref(handle)) == PF_MANIFEST_ERROR
    assert "is not a JSON object" in lib.pf_last_error().decode()


def test_the_c_runtime_knows_planforges_plugin_op_versions(lib):
    from planforge.plugins.registry import plugin_ops

    ops = plugin_ops()
    assert lib.pf_plugin_op_count() == len(ops)
    for key, op in ops.items():
        assert lib.pf_plugin_op_version(key.encode()) == op.schema.version, key


@pytest.fixture(scope="module")
def engine_dirs(tiny_model, tmp_path_factory):
    """Engine directories as build --target tensorrt writes them (the manifest from Python's own code), with a
    stand-in engine file: one with the real plugin forms (all AOT for a dense model), one whose attention is
    marked as the Python plugin (as an unsplit SparseHeadsAttention would be)."""
    from planforge.graph_passes.api import OptimizeOptions, optimize
    from planforge.manifest import Manifest
    from planforge.plugins.registry import plugin_op
    from planforge.runtime.tensorrt_engine import ENGINE_FILE, EngineSettings, engine_section, profiles

    root = tmp_path_factory.mktemp("engines")
    optimize(tiny_model("llama", "bf16")[1], root / "prepared", OptimizeOptions(target="tensorrt"))
    dirs = {}
    for kind in ("real", "python_attention"):
        shutil.copytree(root / "prepared", root / kind)
        manifest = Manifest.load(root / kind)
        forms = {key: "python" if kind != "real" and "Attention" in key else plugin_op(key.split("::")[1]).tensorrt_form
                 for key in manifest.plugin_ops}
        manifest.tensorrt = engine_section("10.13.0.35", (9, 0), forms, manifest,
                                           profiles(manifest, EngineSettings()), "8.7")
        manifest.save(root / kind)
        (root / kind / ENGINE_FILE).write_bytes(b"serialized engine")
        dirs[kind] = root / kind
    dirs["portable"] = tiny_model("llama", "bf16")[1]
    return dirs


@pytest.mark.parametrize("kind,status,message", [
    ("portable", PF_BACKEND_UNAVAILABLE, "holds a bf16 model, whose KV cache ONNX Runtime's CPU kernels cannot take"),
    ("python_attention", PF_ENGINE_MISMATCH, "uses Python plugins (planforge::FusedAttentionDecode v2, "
                                             "planforge::FusedAttentionPrefill v2)"),
    ("real", PF_BACKEND_UNAVAILABLE, "built without TensorRT"),
])
def test_the_c_runtime_checks_an_engine_directory_before_tensorrt(lib, engine_dirs, kind, status, message):
    handle = ctypes.c_void_p()
    assert lib.pf_runtime_open(str(engine_dirs[kind]).encode(), ctypes.byref(handle)) == status
    assert message in lib.pf_last_error().decode()


def test_the_sample_service_says_why_it_cannot_serve(build, engine_dirs):
    done = subprocess.run([str(build / "planforge_generate_service"), str(engine_dirs["real"])],
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "built without TensorRT" in done.stderr
