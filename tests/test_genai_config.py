"""Every planforge output opens in ONNX Runtime GenAI (the real package) and generates planforge's text.

The same text gives the same ids in planforge, transformers and ORT-GenAI (with its
``add_special_tokens`` option; its default encodes without them), and ORT-GenAI's greedy
tokens equal ``Generator``'s for every portable and lowered form.
"""

import json

import numpy as np
import onnxruntime_genai as og  # the test extra: the real package, so a missing install fails here
import pytest

from planforge.genai_config import GENAI_CONFIG_FILE
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.contextual_sparsity import SparsityOptions
from planforge.graph_passes.schemes import QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions
from planforge.manifest import Manifest
from planforge.runtime import GenerationConfig, Generator, Tokenizer, open_backend

NEW_TOKENS = 12
TEXT = "Attention with a key value cache"


def _og_tokens(directory, ids, new_tokens=NEW_TOKENS):
    model = og.Model(str(directory))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(ids):]]


def _og_ids(directory, text):
    tokenizer = og.Tokenizer(og.Model(str(directory)))
    tokenizer.update_options(add_special_tokens="true")
    return [int(t) for t in tokenizer.encode(text)]


def _planforge_tokens(directory, ids, new_tokens=NEW_TOKENS):
    config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    return Generator(open_backend(directory)).generate([ids], config).tokens[0]


@pytest.fixture(scope="module")
def variants(tiny_model, tmp_path_factory):
    """Every portable and lowered form of the tiny Llama, by name."""
    from support import CORPUS
    from sparsity_support import make_predictor

    root = tmp_path_factory.mktemp("genai")
    exported = tiny_model("llama")[1]
    calib = root / "calib.txt"
    calib.write_text(CORPUS)
    predictor = root / "predictor.safetensors"
    make_predictor(Manifest.load(exported).dims, predictor)
    forms = {"fp32": exported, "fp16": tiny_model("llama", "fp16")[1]}
    options = {
        "w4a16": OptimizeOptions(quant=QuantOptions("w4a16")),
        "w8a8": OptimizeOptions(quant=QuantOptions("w8a8")),
        "w4a4": OptimizeOptions(quant=QuantOptions("w4a4", outliers="4"), calib=calib, calib_samples=4,
                                calib_seq_len=32),
        "w4a4 portable": OptimizeOptions(quant=QuantOptions("w4a4", outliers="4"), calib=calib, calib_samples=4,
                                         calib_seq_len=32, target="portable"),
        "sparse": OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor)),
        "streaming": OptimizeOptions(streaming=StreamingOptions(4, 28)),
    }
    for name, option in options.items():
        optimize(exported, root / name.replace(" ", "_"), option)
        forms[name] = root / name.replace(" ", "_")
    return forms


@pytest.mark.parametrize("name", ["fp32", "fp16", "w4a16", "w8a8", "w4a4", "w4a4 portable", "sparse", "streaming"])
def test_ort_genai_generates_planforge_text(variants, name):
    directory = variants[name]
    config = json.loads((directory / GENAI_CONFIG_FILE).read_text())
    # the GroupQueryAttention graphs share one buffer per layer; the portable, sparse and streaming ones keep
    # Attention and its concat cache
    shared = name in ("w4a16", "w8a8", "w4a4")
    assert config["search"]["past_present_share_buffer"] is shared
    assert Manifest.load(directory).io.get("past_present_share_buffer", False) is shared
    ids = Tokenizer(directory).encode(TEXT)
    assert _og_ids(directory, TEXT) == ids
    assert _og_tokens(directory, ids) == _planforge_tokens(directory, ids)


def test_streaming_config_stops_where_the_cache_is_full(variants):
    config = json.loads((variants["streaming"] / GENAI_CONFIG_FILE).read_text())
    assert config["model"]["context_length"] == config["search"]["max_length"] == 32  # 4 sinks + 28
    assert json.loads((variants["fp32"] / GENAI_CONFIG_FILE).read_text())["model"]["context_length"] == 256


def test_bf16_export_carries_a_config(tiny_model):
    config = json.loads((tiny_model("llama", "bf16")[1] / GENAI_CONFIG_FILE).read_text())
    assert config["model"]["decoder"]["num_key_value_heads"] == 2 and config["model"]["type"] == "llama"


def test_the_reference_tokenizer_adds_bos_everywhere(tmp_path):
    """The reference model's tokenizer prepends BOS: planforge, transformers and ORT-GenAI agree on it."""
    from transformers import AutoTokenizer

    from planforge.evaluation.demo import REFERENCE_MODEL
    from planforge.exporter.api import ExportOptions, export

    export(str(REFERENCE_MODEL), tmp_path / "ref", ExportOptions())
    ids = Tokenizer(tmp_path / "ref").encode("The Python interpreter")
    assert ids[0] == Manifest.load(tmp_path / "ref").bos_token_id
    assert AutoTokenizer.from_pretrained(REFERENCE_MODEL).encode("The Python interpreter") == ids
    assert _og_ids(tmp_path / "ref", "The Python interpreter") == ids
    assert _og_tokens(tmp_path / "ref", ids, 24) == _planforge_tokens(tmp_path / "ref", ids, 24)
    np.testing.assert_array_equal(ids[1:], Tokenizer(tmp_path / "ref").encode("The Python interpreter", False))
