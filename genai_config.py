"""``genai_config.json``: the file ONNX Runtime GenAI needs to open a planforge directory.

Every export and optimize output carries one, so ORT-GenAI's C, C++, C#, Java and
Python clients load the directory as written (``og.Model(OUT)``). What it says:

- the I/O names of ``docs/onnx_contract.md`` (``input_ids``, ``attention_mask``,
  ``position_ids``, ``past_key_values.%d.key|value`` -> ``logits``, ``present.%d.key|value``);
- ``past_present_share_buffer``: ``true`` for the graph lowered onto ``GroupQueryAttention``
  (``optimize --target onnxruntime``, ``manifest.io["past_present_share_buffer"]``): one
  max-length buffer per layer, written in place. ``false`` for the portable graph: the opset-23
  ``Attention`` returns ``present = concat(past, new)``, a new tensor per step, and fails with
  "inconsistent total_sequence_length" on a max-length past;
- greedy search up to the model's ``max_seq_len``, like ``planforge run``;
- no thread count: ORT-GenAI's own default applies (half the hardware threads).

Tokenization (``planforge.tokenizer``): planforge encodes with the tokenizer's special
tokens, as transformers' ``tokenizer(text)`` does (a BOS for the Llama family), and pins
them in tokenizer_config.json. ORT-GenAI's ``Tokenizer.encode`` adds none by default;
``tokenizer.update_options(add_special_tokens="true")`` gives planforge's ids.

A streaming model (``optimize --streaming``) gets ``context_length`` = its cache slots:
ORT-GenAI preallocates every present KV at the total length, and the rolling cache
returns at most S + W positions, so ORT-GenAI runs it only until the cache is full.
"""

from __future__ import annotations

import json
from pathlib import Path

from planforge import constants
from planforge.manifest import Manifest

GENAI_CONFIG_FILE = "genai_config.json"
# ORT-GenAI model types with their own handling; any other decoder is the generic "decoder".
GENAI_TYPES = {"llama", "mistral", "qwen2", "gpt2"}


def _layer_name(name_of_layer_0: str) -> str:
    return name_of_layer_0.replace(".0.", ".%d.")


def genai_config(manifest: Manifest) -> dict:
    d = manifest.dims
    context = manifest.streaming["cache_slots"] if manifest.streaming else d.max_seq_len
    eos = manifest.eos_token_ids
    pad = manifest.pad_token_id if manifest.pad_token_id is not None else (eos[0] if eos else 0)
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": constants.MODEL_FILE,
        "head_size": d.head_dim,
        "hidden_size": d.hidden_size,
        "num_attention_heads": d.num_heads,
        "num_hidden_layers": d.num_layers,
        "num_key_value_heads": d.num_kv_heads,
        "inputs": {
            "input_ids": constants.INPUT_IDS,
            "attention_mask": constants.ATTENTION_MASK,
            "position_ids": constants.POSITION_IDS,
            "past_key_names": _layer_name(constants.past_key(0)),
            "past_value_names": _layer_name(constants.past_value(0)),
        },
        "outputs": {
            "logits": constants.LOGITS,
            "present_key_names": _layer_name(constants.present_key(0)),
            "present_value_names": _layer_name(constants.present_value(0)),
        },
    }
    model = {
        "type": manifest.family if manifest.family in GENAI_TYPES else "decoder",
        "vocab_size": d.vocab_size,
        "context_length": context,
        "bos_token_id": manifest.bos_token_id if manifest.bos_token_id is not None else pad,
        "eos_token_id": eos if len(eos) > 1 else (eos[0] if eos else pad),
        "pad_token_id": pad,
        "decoder": decoder,
    }
    search = {
        "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": context,
        "min_length": 0, "temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0, "early_stopping": True,
        # the lowered GroupQueryAttention graph writes into one max-length buffer per layer; Attention cannot
        "past_present_share_buffer": bool(manifest.io.get("past_present_share_buffer", False)),
    }
    return {"model": model, "search": search}


def write_genai_config(directory: Path, manifest: Manifest) -> None:
    """ORT-GenAI's config, for the graphs ONNX Runtime runs (a plugin-lowered graph has another I/O contract)."""
    if manifest.target in ("portable", "onnxruntime"):
        (Path(directory) / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(manifest), indent=2) + "\n")
