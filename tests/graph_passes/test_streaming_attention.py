"""`optimize --streaming`: sink + rolling-window KV cache (StreamingLLM) against transformers and a torch reference."""

import numpy as np
import pytest
import torch

from planforge.errors import InvalidPromptError, UnsupportedArchitectureError
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.streaming_attention import StreamingConfigError, StreamingOptions
from planforge.runtime import Backend, Generator, open_backend
from planforge.runtime.generator import GenerationConfig
from planforge.manifest import Manifest
from streaming_reference import streaming_logits

SINKS, WINDOW = 2, 6  # 8 cache slots; the streams below are several times longer
ATOL = 1e-4  # fp32 logits of the tiny models are O(1)


@pytest.fixture(scope="module")
def streaming_model(tiny_model, tmp_path_factory):
    """streaming_model(family, sinks, window) -> (source, plain export, streaming export)."""
    cache = {}

    def get(family, sinks=SINKS, window=WINDOW):
        if (family, sinks, window) not in cache:
            source, exported = tiny_model(family)
            out = tmp_path_factory.mktemp(f"stream_{family}") / "model"
            optimize(exported, out, OptimizeOptions(streaming=StreamingOptions(sinks, window), target="portable"))
            cache[(family, sinks, window)] = (source, exported, out)
        return cache[(family, sinks, window)]

    return get


def stream_logits(session: Backend, ids: list[int], first_chunk: int) -> tuple[np.ndarray, list]:
    """Feeds ``first_chunk`` tokens in one step, then one token per step, through the Generator's masks."""
    generator = Generator(session)
    row = np.array([ids], dtype=np.int64)
    mask = np.ones((1, first_chunk), dtype=np.int64)
    cache = session.empty_cache(1)
    logits, cache = session.forward(row[:, :first_chunk], mask, np.arange(first_chunk)[None], cache)
    out, lengths = [logits[0]], [cache.length]
    for t in range(first_chunk, len(ids)):
        mask = generator.next_mask(mask)
        logits, cache = session.forward(row[:, t:t + 1], mask, np.array([[t]]), cache)
        out.append(logits[0])
        lengths.append(cache.length)
    return np.concatenate(out), lengths, cache


def test_reference_equals_transformers_while_nothing_is_evicted(tiny_model, hf_model):
    source, _ = tiny_model("llama")
    ids = list(range(5, 25))
    with torch.no_grad():
        expected = hf_model(source)(torch.tensor([ids])).logits[0]
    got = streaming_logits(hf_model(source), ids, sinks=4, window=len(ids))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "granite", "gemma", "gemma2", "gemma3"])
def test_equals_the_plain_model_until_the_cache_fills(streaming_model, family):
    _, exported, streamed = streaming_model(family)
    ids = list(np.random.RandomState(1).randint(1, 300, SINKS + WINDOW))
    plain, _, _ = stream_logits(open_backend(exported), ids, first_chunk=3)
    got, lengths, _ = stream_logits(open_backend(streamed), ids, first_chunk=3)
    assert lengths == list(range(3, SINKS + WINDOW + 1))
    np.testing.assert_allclose(got, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "granite"])
def test_after_the_cache_fills_equals_the_torch_streaming_reference(streaming_model, hf_model, family):
    source, _, streamed = streaming_model(family)
    ids = [int(i) for i in np.random.RandomState(2).randint(1, 300, 5 * (SINKS + WINDOW))]
    got, lengths, _ = stream_logits(open_backend(streamed), ids, first_chunk=SINKS + WINDOW)
    assert max(lengths) == SINKS + WINDOW and lengths[-1] == SINKS + WINDOW  # constant memory
    expected = streaming_logits(hf_model(source), ids, SINKS, WINDOW).numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # The sinks matter: without them the same window gives different logits after the cache fills.
    no_sinks = streaming_logits(hf_model(source), ids, 0, WINDOW).numpy()
    assert np.abs(no_sinks[SINKS + WINDOW:] - got[SINKS + WINDOW:]).max() > 100 * ATOL


def test_a_model_window_composes_with_streaming(streaming_model, hf_model):
    """Mistral's own window (8) inside a streaming cache: W >= 8 is exactly the plain model; W < 8 both apply."""
    source, _, _ = streaming_model("mistral")
    model = hf_model(source)
    ids = [int(i) for i in np.random.RandomState(3).randint(1, 300, 40)]
    with torch.no_grad():
        plain = model(torch.tensor([ids])).logits[0].numpy()
    for window, expected in ((10, plain), (5, streaming_logits(model, ids, SINKS, 5, model_window=8).numpy())):
        _, _, streamed = streaming_model("mistral", SINKS, window)
        got, _, _ = stream_logits(open_backend(streamed), ids, first_chunk=SINKS + window)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_eviction_never_drops_the_sinks(streaming_model):
    _, _, streamed = streaming_model("llama")
    session = open_backend(streamed)
    ids = [int(i) for i in np.random.RandomState(4).randint(1, 300, 6 * (SINKS + WINDOW))]
    _, _, first = stream_logits(session, ids[:SINKS + WINDOW], first_chunk=SINKS + WINDOW)
    _, _, last = stream_logits(session, ids, first_chunk=SINKS + WINDOW)
    for before, after in zip(first.values, last.values):  # un-rotated keys and values of every layer
        assert after.shape()[2] == SINKS + WINDOW
        np.testing.assert_array_equal(after.numpy()[:, :, :SINKS], before.numpy()[:, :, :SINKS])


def test_a_cache_as_long_as_max_seq_len_streams_past_it(make_random_model, hf_model, tmp_path):
    """S + W = max_seq_len, the CLI's default window: the Generator takes prompts and generations longer than
    max_seq_len with a constant cache, and the logits still match the torch reference."""
    from planforge.exporter.api import ExportOptions, export

    source = make_random_model("llama", tmp_path / "hf")
    export(str(source), tmp_path / "onnx", ExportOptions(max_seq_len=32))
    optimize(tmp_path / "onnx", tmp_path / "stream", OptimizeOptions(streaming=StreamingOptions(4, 28),
                                                                      target="portable"))
    session = open_backend(tmp_path / "stream")
    prompt = [int(i) for i in np.random.RandomState(5).randint(1, 300, 100)]
    got, lengths, _ = stream_logits(session, prompt, first_chunk=32)
    assert set(lengths) == {32}
    np.testing.assert_allclose(got, streaming_logits(hf_model(source), prompt, 4, 28).numpy(), atol=ATOL, rtol=0)

    generator, lengths = Generator(session, native_loop=False), []  # the Python loop, whose steps the spy sees
    forward = session.forward

    def spy(*args, **kwargs):
        logits, cache = forward(*args, **kwargs)
        lengths.append(cache.length)
        return logits, cache

    session.forward = spy
    result = generator.generate([prompt, prompt[::-1]], GenerationConfig(max_new_tokens=40, ignore_eos=True))
    assert [len(t) for t in result.tokens] == [40, 40] and result.finish_reasons == ["length", "length"]
    assert set(lengths) == {32}
    with pytest.raises(InvalidPromptError, match="equal token length"):
        generator.generate([prompt, prompt[:10]])


@pytest.mark.parametrize("sinks, window, match", [
    (4, 0, "--window must be >= 1"),
    (4, -3, "--window must be >= 1"),
    (8, 8, "not fewer than --window"),
    (-1, 8, "--sink-tokens must be >= 0"),
    (4, 300, "more than the 256 positions"),
])
def test_bad_streaming_settings_are_refused(tiny_model, tmp_path, sinks, window, match):
    with pytest.raises(StreamingConfigError, match=match):
        optimize(tiny_model("llama")[1], tmp_path / "out", OptimizeOptions(streaming=StreamingOptions(sinks, window)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["gpt2", "smollm3"])  # learned positions; a layer without positions (NoPE)
def test_attention_without_rotary_cannot_stream(tiny_model, tmp_path, family):
    with pytest.raises(UnsupportedArchitectureError, match="learned absolute positions .* attends without positions"):
        optimize(tiny_model(family)[1], tmp_path / "out", OptimizeOptions(streaming=StreamingOptions(2, 6)))
    assert not (tmp_path / "out").exists()


def test_streaming_twice_is_refused_and_the_contract_is_recorded(streaming_model, tmp_path):
    _, _, streamed = streaming_model("llama")
    manifest = Manifest.load(streamed)
    assert manifest.streaming == {"sink_tokens": SINKS, "window": WINDOW, "cache_slots": SINKS + WINDOW}
    assert manifest.passes[-1]["name"] == "streaming_attention" and manifest.passes[-1]["matches"] == 2
    present = next(e for e in manifest.io["outputs"] if e["name"] == "present.0.key")
    assert present["shape"][2] == f"min(total_sequence, {SINKS + WINDOW})"
    with pytest.raises(StreamingConfigError, match="already streams"):
        optimize(streamed, tmp_path / "again", OptimizeOptions(streaming=StreamingOptions(SINKS, WINDOW)))


def test_streaming_composes_with_quantization(tiny_model, tmp_path):
    """One call, W8A8 then streaming: before the cache fills it equals the W8A8 model without streaming."""
    _, exported = tiny_model("llama")
    from planforge.graph_passes.schemes import QuantOptions

    quant = QuantOptions(scheme="w8a8", outliers="0", int8_layers=(), weight_method="rtn")
    optimize(exported, tmp_path / "q", OptimizeOptions(quant=quant, target="portable"))
    optimize(exported, tmp_path / "qs", OptimizeOptions(quant=quant, streaming=StreamingOptions(SINKS, WINDOW),
                                                        target="portable"))
    assert [p["name"] for p in Manifest.load(tmp_path / "qs").passes] == ["quantize_linears", "streaming_attention"]
    ids = [int(i) for i in np.random.RandomState(6).randint(1, 300, SINKS + WINDOW)]
    plain, _, _ = stream_logits(open_backend(tmp_path / "q"), ids, first_chunk=3)
    got, _, _ = stream_logits(open_backend(tmp_path / "qs"), ids, first_chunk=3)
    np.testing.assert_allclose(got, plain, atol=1e-5, rtol=0)
