"""The token-embedding quantization pass against an independent reference.

Reference: the per-element loop quantizer of test_quantizer.py (scales by explicit loops
over block, row and clip ratio), and transformers' model with its embedding (and tied LM
head) replaced by the table that loop reference dequantizes.
"""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.quantize_embedding import EmbeddingOptions, dequantized_table, quantize_table
from planforge.graph_passes.quantizer import CLIP_RATIOS
from planforge.graph_passes.schemes import QuantizationError, QuantOptions
from planforge.runtime import open_backend
from planforge.manifest import Manifest, model_file_bytes

from .test_quantizer import _loop_reference

ATOL = 1e-4  # fp32 end to end, the same tolerance as the exporter's transformers test


def _reference_table(table: np.ndarray, bits: int, group) -> np.ndarray:
    """Dequantized [V, H] table from the loop reference (the table is the tied LM head's weight E^T)."""
    scale = _loop_reference(table.T.astype(np.float32), bits, group, CLIP_RATIOS).T  # (V, G)
    qm = 2 ** (bits - 1) - 1
    g = group or table.shape[1]
    rows = np.repeat(scale, g, axis=1)[:, :table.shape[1]]
    return np.clip(np.round(table / rows), -qm - 1, qm).astype(np.float32) * rows


@pytest.mark.parametrize("storage,shape", [("int4", (40, 160)), ("int8", (40, 96))])
def test_quantize_table_is_bit_exact_vs_loop_reference(storage, shape):
    rng = np.random.default_rng(0)
    table = rng.standard_normal(shape).astype(np.float32) * 0.05
    table[rng.integers(0, shape[0], 6), rng.integers(0, shape[1], 6)] *= 20
    options = EmbeddingOptions(storage)
    q, scale = quantize_table(table, options)
    assert q.shape == table.shape and scale.shape == (shape[0], -(-shape[1] // (options.group or shape[1])))
    assert q.min() >= -2 ** (options.bits - 1) and q.max() <= 2 ** (options.bits - 1) - 1
    np.testing.assert_array_equal(dequantized_table(q, scale, options.group),
                                  _reference_table(table, options.bits, options.group))


def _tied_llama(tmp_path):
    from planforge.exporter.api import ExportOptions, export
    from support import save_random_model

    source = save_random_model("llama", tmp_path / "hf", tie_word_embeddings=True, hidden_size=160,
                               num_attention_heads=4, head_dim=40)
    export(str(source), tmp_path / "onnx", ExportOptions(dtype="fp32"))
    return source, tmp_path / "onnx"


def _logits_match_reference(source, compiled, bits, group, tied, atol=ATOL, table_dtype=np.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    table = model.get_input_embeddings().weight.detach().numpy().astype(table_dtype).astype(np.float32)
    model.get_input_embeddings().weight.data = torch.from_numpy(_reference_table(table, bits, group))
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 300, (2, 12), generator=g)
    mask, positions = torch.ones_like(ids), torch.arange(12).expand(2, 12)
    session = open_backend(compiled)
    logits, cache = session.forward(ids.numpy(), mask.numpy(), positions.numpy(), session.empty_cache(2))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=atol, rtol=0)
    token = torch.randint(1, 300, (2, 1), generator=g)  # one decode step through the cache
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    logits, _ = session.forward(token.numpy(), mask.numpy(), positions[:, -1:].numpy() + 1, cache)
    with torch.no_grad():
        ref = model(input_ids=token, attention_mask=mask, position_ids=positions[:, -1:] + 1,
                    past_key_values=ref.past_key_values, use_cache=True)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=atol, rtol=0)


def test_tied_int4_table_serves_lookup_and_lm_head(tmp_path):
    source, compiled = _tied_llama(tmp_path)
    out = tmp_path / "int4"
    _, (report,) = optimize(compiled, out, OptimizeOptions(embedding="int4", target="portable"))
    assert report.name == "quantize_embedding" and report.matches == 1
    entry = Manifest.load(out).passes[0]
    assert entry["settings"] == {"storage": "int4", "bits": 4, "group": 64, "clip_search": True}
    graph = onnx.load(str(out / "model.onnx")).graph
    types = {t.name: t.data_type for t in graph.initializer}
    assert types["model.embed_tokens.weight/quant.weight_q"] == onnx.TensorProto.INT4
    assert "model.embed_tokens.weight" not in types  # one INT4 copy, no float table left
    (dq,) = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    readers = [n.op_type for n in graph.node if dq.output[0] in n.input]
    assert sorted(readers) == ["Gather", "Transpose"]  # the lookup and the tied LM head
    # 160 hidden = blocks of 64, 64, 32: the partial last block is covered too
    _logits_match_reference(source, out, bits=4, group=64, tied=True)
    from support import VOCAB

    table_bytes = VOCAB * 160 * 4  # fp32
    saved = model_file_bytes(compiled) - model_file_bytes(out)
    assert saved > 0.8 * table_bytes  # 4 bits + one fp32 scale per 64 of 32-bit floats: ~84% smaller


def test_untied_int8_table_keeps_float_lm_head(tiny_model, tmp_path):
    source, compiled = tiny_model("llama")
    optimize(compiled, tmp_path / "int8", OptimizeOptions(embedding="int8", target="portable"))
    _logits_match_reference(source, tmp_path / "int8", bits=8, group=None, tied=False)


def test_gpt2_quantizes_the_token_table_not_the_positions(tiny_model, tmp_path):
    source, compiled = tiny_model("gpt2")
    optimize(compiled, tmp_path / "gpt2", OptimizeOptions(embedding="int4", target="portable"))
    types = {t.name: t.data_type for t in onnx.load(str(tmp_path / "gpt2" / "model.onnx")).graph.initializer}
    assert types["transformer.wpe.weight"] == onnx.TensorProto.FLOAT
    _logits_match_reference(source, tmp_path / "gpt2", bits=4, group=64, tied=True)


def test_auto_follows_the_scheme_for_tied_tables_only(tiny_model, tmp_path):
    w4a4, w8a8, w4a16 = (QuantOptions(s) for s in ("w4a4", "w8a8", "w4a16"))
    assert [OptimizeOptions(quant=q).embedding_storage(tied=True) for q in (w4a4, w8a8, w4a16)] == ["int4", "int8", "int4"]
    assert OptimizeOptions(quant=w4a4).embedding_storage(tied=False) == "float"  # untied: auto keeps it float
    assert OptimizeOptions(quant=w4a4, embedding="float").embedding_storage(tied=True) == "float"
    assert OptimizeOptions(embedding="int8", target="portable").embedding_storage(tied=False) == "int8"
    assert OptimizeOptions().embedding_storage(tied=True) == "float"
    _, reports = optimize(tiny_model("llama")[1], tmp_path / "untied", OptimizeOptions(quant=w4a16, target="portable"))
    assert [r.name for r in reports] == ["quantize_linears"]  # the tiny Llama is untied
    _, reports = optimize(tiny_model("gpt2")[1], tmp_path / "tied", OptimizeOptions(quant=w4a16, target="portable"))
    assert [(r.name, r.matches) for r in reports] == [("quantize_linears", 12), ("quantize_embedding", 1)]
    entry = Manifest.load(tmp_path / "tied").passes[1]
    assert entry["settings"]["clip_search"] is True
    _, reports = optimize(tiny_model("gpt2")[1], tmp_path / "noclip",
                          OptimizeOptions(quant=QuantOptions("w4a16", clip_search=False), target="portable"))
    assert Manifest.load(tmp_path / "noclip").passes[1]["settings"]["clip_search"] is False


def test_quantize_table_in_chunks_equals_one_piece(monkeypatch):
    from planforge.graph_passes import quantize_embedding

    table = np.random.default_rng(1).standard_normal((50, 128)).astype(np.float32)
    whole = quantize_table(table, EmbeddingOptions("int4"))
    monkeypatch.setattr(quantize_embedding, "ROWS_PER_CHUNK", 7)
    chunked = quantize_table(table, EmbeddingOptions("int4"))
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked))


def test_fp16_model_casts_the_table(tiny_model, tmp_path):
    source, compiled16 = tiny_model("llama", "fp16")
    optimize(compiled16, tmp_path / "int4", OptimizeOptions(embedding="int4", target="portable"))
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph
    assert any(n.op_type == "Cast" and n.input[0].endswith("DequantizeLinear_output") for n in graph.node)
    # fp16 math end to end against the fp32 reference: the exporter's fp16 tolerance
    _logits_match_reference(source, tmp_path / "int4", bits=4, group=64, tied=False, atol=2e-2,
                            table_dtype=np.float16)


def test_bad_embedding_settings_are_refused(tiny_model, tmp_path):
    compiled = tiny_model("llama")[1]
    with pytest.raises(QuantizationError, match="unknown embedding storage 'int3'"):
        optimize(compiled, tmp_path / "x", OptimizeOptions(embedding="int3"))
    no_lookup = tmp_path / "no_lookup"  # a graph whose lookup does not read input_ids directly
    shutil.copytree(compiled, no_lookup)
    model = onnx.load(str(no_lookup / "model.onnx"))
    lookup = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["input_ids"], ["ids_copy"]))
    lookup.input[1] = "ids_copy"
    onnx.save(model, str(no_lookup / "model.onnx"))
    with pytest.raises(QuantizationError, match="no token-embedding table to quantize"):
        optimize(no_lookup, tmp_path / "y", OptimizeOptions(embedding="int4", target="portable"))
    assert not (tmp_path / "y").exists()
    optimize(compiled, tmp_path / "once", OptimizeOptions(embedding="int4", target="portable"))
    proc = subprocess.run([sys.executable, "-m", "planforge.cli.app", "optimize", str(tmp_path / "once"), "-o",
                           str(tmp_path / "twice"), "--quant", "none", "--embedding", "int8", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "already quantized" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "twice").exists() and not (tmp_path / "x").exists()
