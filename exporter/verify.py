"""Every export is checked against its source model before anything is written: a wrong graph is never produced.

The written ``model.onnx`` runs on ONNX Runtime (CPU) on a few seeded random tokens, a prefill and one decode
step through the KV cache, and its logits are compared with the transformers model's own (float32). A
mismatch refuses the export with the numbers. The bound is relative to the logits' magnitude: float32
exports differ from transformers by ~1e-6 of it; a graph with a wrong structure by order 1. bf16 graphs are
not checked here (ONNX Runtime's CPU provider has no bf16 kernels); the bf16 graph is the fp32 graph's
structure with other weight types, which every fp32 export has checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from planforge import constants
from planforge.errors import ExportMismatchError

log = logging.getLogger(__name__)

# max |Δ logits| / max |logits| allowed, by export dtype
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
TOKENS = 6


def check_against_source(onnx_path: Path, hf_model, dims, dtype: str, family: str) -> None:
    if dtype not in TOLERANCE:
        log.info("%s export not checked against the source (ONNX Runtime has no CPU bf16 kernels)", dtype)
        return
    try:
        error = _relative_error(onnx_path, hf_model, dims, dtype)
    except Exception as exc:  # noqa: BLE001 (either model failing to run is a refusal, not a traceback)
        raise ExportMismatchError(f"the exported {family} graph could not be checked against the source model "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). Nothing was written.") \
            from None
    if not np.isfinite(error) or error > TOLERANCE[dtype]:
        raise ExportMismatchError(
            f"the exported {family} graph does not reproduce the source model: max |Δ logits| is {error:.2e} of "
            f"max |logits| on {TOKENS} random tokens and one decode step (allowed {TOLERANCE[dtype]:.0e}). Nothing "
            "was written. The model's forward does something the shared records do not express; please report it.")


def _relative_error(onnx_path: Path, hf_model, dims, dtype: str) -> float:
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    tokens = max(1, min(TOKENS, dims.max_seq_len - 1))  # the prefill, then one decode step, within max_seq_len
    ids = rng.integers(0, dims.vocab_size, (1, tokens + 1))
    with torch.no_grad():
        reference = hf_model(input_ids=torch.from_numpy(ids)).logits.float().numpy()  # (1, T + 1, V)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    kv = {"fp32": np.float32, "fp16": np.float16}[dtype]
    feeds = {constants.INPUT_IDS: ids[:, :tokens], constants.ATTENTION_MASK: np.ones((1, tokens), np.int64),
             constants.POSITION_IDS: np.arange(tokens)[None]}
    for i in range(dims.num_layers):
        for name in (constants.past_key(i), constants.past_value(i)):
            feeds[name] = np.zeros((1, dims.num_kv_heads, 0, dims.head_dim), kv)
    outputs = session.run(None, feeds)
    step = {constants.INPUT_IDS: ids[:, tokens:], constants.ATTENTION_MASK: np.ones((1, tokens + 1), np.int64),
            constants.POSITION_IDS: np.array([[tokens]])}
    for i in range(dims.num_layers):
        step[constants.past_key(i)], step[constants.past_value(i)] = outputs[1 + 2 * i], outputs[2 + 2 * i]
    logits = np.concatenate([outputs[0], session.run([constants.LOGITS], step)[0]], axis=1).astype(np.float32)
    return float(np.abs(logits - reference).max()) / max(float(np.abs(reference).max()), 1e-6)
