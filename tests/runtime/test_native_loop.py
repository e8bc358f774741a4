"""The C++ runtime's generation loop (runtime/native.py) on ONNX Runtime, against the Python loop over the same
backend, on both cache contracts (the lowered graph's shared buffers, the portable graph's concatenated presents,
streaming included): the same tokens and finish reasons, greedy and sampled, on left-padded batches, with stop
tokens and at the cache's end; the callback contract; and the cases where the Python loop runs instead.

Needs CMake, a C++ compiler and nlohmann-json (.ci/run installs them); skips, saying which is missing, without.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from planforge.errors import BackendUnavailableError
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.schemes import QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions
from planforge.runtime import GenerationConfig, Generator, SamplingConfig, native, open_backend


@pytest.fixture(scope="module")
def lowered(tiny_model, tmp_path_factory):
    """lowered(dtype, scheme) -> a tiny llama optimized with the default --target onnxruntime (shared buffers)."""
    if native.load_library() is None:
        pytest.skip(native.unavailable_reason())
    cache = {}

    def get(dtype="fp32", scheme="none"):
        if scheme == "export":
            return tiny_model("llama", dtype)[1]
        if (dtype, scheme) not in cache and scheme == "streaming":  # sinks + window, on the portable graph
            cache[(dtype, scheme)] = tmp_path_factory.mktemp("streaming") / "model"
            optimize(tiny_model("llama", dtype)[1], cache[(dtype, scheme)],
                     OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
        if (dtype, scheme) not in cache:
            out = tmp_path_factory.mktemp(f"lowered_{dtype}_{scheme}") / "model"
            optimize(tiny_model("llama", dtype)[1], out, OptimizeOptions(
                quant=None if scheme == "none" else QuantOptions(scheme, outliers="0")))  # no calibration
            cache[(dtype, scheme)] = out
        return cache[(dtype, scheme)]

    return get


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 300, size=n).tolist() for n in lengths]


def _both(model, prompts, config, **callbacks):
    backend = open_backend(model, threads=2)
    assert backend.native_loop() is not None, native.unavailable_reason()
    return (Generator(backend).generate(prompts, config, **callbacks),
            Generator(backend, native_loop=False).generate(prompts, config, **callbacks))


@pytest.mark.parametrize("dtype,scheme", [("fp32", "none"), ("fp16", "none"), ("fp32", "w4a16"), ("fp32", "w4a4"),
                                          ("fp32", "export"), ("fp16", "export")])
@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(do_sample=True, temperature=0.8, top_k=20,
                                                                       top_p=0.9, seed=7)])
def test_the_native_loop_picks_the_python_loops_tokens(lowered, dtype, scheme, sampling):
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True, sampling=sampling)
    ours, python = _both(lowered(dtype, scheme), _prompts(1, [5, 17, 9]), config)  # left-padded: rows one by one
    assert ours.tokens == python.tokens
    assert ours.finish_reasons == python.finish_reasons == ["length"] * 3
    assert ours.prompt_lengths == [5, 17, 9] and ours.prefill_seconds > 0 and ours.decode_seconds > 0
    assert (ours.loop, python.loop) == ("c++", "python")


def test_a_streaming_model_runs_past_its_slots_as_in_python(lowered):
    config = GenerationConfig(max_new_tokens=20, ignore_eos=True)  # 11 + 20 tokens through 2 + 6 slots
    ours, python = _both(lowered(scheme="streaming"), _prompts(6, [11, 11]), config)
    assert ours.tokens == python.tokens and ours.finish_reasons == python.finish_reasons == ["length"] * 2


def test_stop_tokens_and_the_caches_end_finish_rows_as_in_python(lowered):
    model = lowered()
    prompt = _prompts(3, [8])[0]
    free = Generator(open_backend(model)).generate([prompt], GenerationConfig(max_new_tokens=10, ignore_eos=True))
    ours, python = _both(model, [prompt, _prompts(4, [6])[0]],
                         GenerationConfig(max_new_tokens=10, ignore_eos=True, stop_token_ids=(free.tokens[0][4],)))
    assert ours.tokens == python.tokens and ours.finish_reasons == python.finish_reasons
    assert ours.finish_reasons[0] == "stop" and ours.tokens[0] == free.tokens[0][:free.tokens[0].index(free.tokens[0][4]) + 1]
    limit = open_backend(model).manifest.dims.max_seq_len
    ours, python = _both(model, _prompts(5, [limit - 3]), GenerationConfig(max_new_tokens=10, ignore_eos=True))
    assert ours.tokens == python.tokens and len(ours.tokens[0]) == 4
    assert ours.finish_reasons == python.finish_reasons == ["max_seq_len"]


def test_the_callback_sees_every_token_and_its_exception_stops_the_loop(lowered):
    generator = Generator(open_backend(lowered()))
    seen = []
    result = generator.generate(_prompts(2, [4, 6]), GenerationConfig(max_new_tokens=5, ignore_eos=True),
                                on_token=lambda row, token: seen.append((row, token)))
    assert [[t for r, t in seen if r == row] for row in range(2)] == result.tokens

    class Stop(Exception):
        pass

    def stop_at_third(row, token):
        seen.append(token)
        if len(seen) == 3:
            raise Stop

    seen.clear()
    with pytest.raises(Stop):
        generator.generate(_prompts(2, [4]), GenerationConfig(max_new_tokens=50, ignore_eos=True),
                           on_token=stop_at_third)
    assert len(seen) == 3  # the C loop stopped at the token that raised


def test_the_python_loop_runs_where_the_native_one_is_off(lowered, monkeypatch):
    monkeypatch.setenv("PLANFORGE_NATIVE_LOOP", "0")
    assert native.load_library.__wrapped__() is None
    assert "PLANFORGE_NATIVE_LOOP=0" in native.unavailable_reason()


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("needs cmake and a C++ compiler")
    broken = tmp_path / "cpp"
    shutil.copytree(native.SOURCE, broken)
    (broken / "src" / "c_api.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    target = tmp_path / "cache" / "native" / "abc" / native.LIBRARY
    with pytest.raises(BackendUnavailableError, match="its build failed"):
        native._build(target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_one_session_in_memory_and_forward_still_works_after_generating(lowered):
    model = lowered()
    ids = np.array(_prompts(7, [6]))
    expected = open_backend(model).prefill_logits(ids)
    backend = open_backend(model)
    Generator(backend).generate(ids.tolist(), GenerationConfig(max_new_tokens=3, ignore_eos=True))
    assert backend._session is None  # the C++ loop holds the model; the Python session was released
    np.testing.assert_array_equal(backend.prefill_logits(ids), expected)  # reopened for forward


def test_planforge_run_says_which_loop_ran(lowered):
    command = [sys.executable, "-m", "planforge.cli.app", "run", str(lowered()), "-p", "The", "--max-new-tokens", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "| loop: c++]" in done.stderr, done.stderr
    off = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PLANFORGE_NATIVE_LOOP": "0"})
    assert off.returncode == 0 and "| loop: python]" in off.stderr
    assert "[the Python generation loop ran: PLANFORGE_NATIVE_LOOP=0]" in off.stderr
