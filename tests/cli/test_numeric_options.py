"""Property tests over the numeric options: every value is either accepted (and then in range) or refused with
the option's own error class naming it; no other exception, no silent default."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from planforge.cli.app import app
from planforge.errors import InvalidGenerationConfigError, InvalidSparsityError
from planforge.graph_passes.contextual_sparsity import SparsityOptions, top_k
from planforge.graph_passes.streaming_attention import StreamingConfigError, StreamingOptions
from planforge.runtime import GenerationConfig, SamplingConfig

MAX_SEQ_LEN = 256
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(sinks=st.integers(-10, 400), window=st.integers(-10, 400))
def test_streaming_settings(sinks, window):
    options = StreamingOptions(sinks, window)
    valid = window >= 1 and 0 <= sinks < window and sinks + window <= MAX_SEQ_LEN
    if valid:
        options.validate(MAX_SEQ_LEN)
    else:
        with pytest.raises(StreamingConfigError, match="--window|--sink-tokens"):
            options.validate(MAX_SEQ_LEN)


@given(temperature=floats, top_k_=st.integers(-5, 10**6), top_p=floats)
def test_sampling_settings(temperature, top_k_, top_p):
    valid = 0 < temperature < math.inf and top_k_ >= 0 and 0.0 < top_p <= 1.0  # NaN compares false: refused
    if valid:
        SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k_, top_p=top_p)
    else:
        with pytest.raises(InvalidGenerationConfigError):
            SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k_, top_p=top_p)


@given(st.integers(-5, 10**6))
def test_max_new_tokens(count):
    if count >= 1:
        assert GenerationConfig(max_new_tokens=count).max_new_tokens == count
    else:
        with pytest.raises(InvalidGenerationConfigError):
            GenerationConfig(max_new_tokens=count)


@given(heads=floats, mlp=floats, units=st.integers(1, 20000))
def test_sparsity_fractions_and_the_units_kept(heads, mlp, units):
    options = SparsityOptions(heads, mlp, predictor="p.safetensors")
    in_range = all(0.0 <= f < 1.0 for f in (heads, mlp))
    if in_range and (heads or mlp):
        options.validate()
        for fraction in (heads, mlp):
            kept = top_k(units, fraction)
            assert 1 <= kept <= units and math.isclose(kept, max(1, units * (1 - fraction)), abs_tol=1)
    else:
        with pytest.raises(InvalidSparsityError):
            options.validate()


@settings(max_examples=30, deadline=None)
@given(option=st.sampled_from(["--stride", "--max-tokens", "--context"]), value=st.integers(-50, 1))
def test_eval_refuses_out_of_range_counts_before_any_work(option, value):
    """Click checks the range at the edge: exit 2 naming the option, before a model is opened (it does not exist)."""
    minimum = {"--stride": 1, "--max-tokens": 2, "--context": 2}[option]
    result = CliRunner().invoke(app, ["eval", "/nonexistent/model", "--ppl", "/nonexistent.txt", option, str(value)])
    if value < minimum:
        assert result.exit_code == 2 and option in result.output, result.output
    else:
        assert option not in result.output
