"""Sparsity helpers several test modules share: tiny models, random predictors, step-by-step runs.

Imported as ``sparsity_support`` (pytest's ``pythonpath`` holds tests/); test modules never import each other.
"""

import numpy as np
import torch

from planforge.sparsity.predictor import Predictor, PredictorHeader, expected_shapes

L, H, Dh, F, V = 2, 4, 8, 48, 96


def llama(num_layers=L, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H * Dh, intermediate_size=F, num_hidden_layers=num_layers,
                      num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def random_predictor(kind="single", seed=0, L=2, H=4, d=16, F=24, h1=8, h2=6) -> Predictor:
    header = PredictorHeader(kind=kind, criterion="plainact", num_layers=L, num_heads=H, num_kv_heads=2,
                             hidden_size=d, intermediate_size=F, head_hidden=h1, neuron_hidden=h2)
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in expected_shapes(header).items()}
    for name in tensors:
        if name.endswith("input_std"):
            tensors[name] = np.abs(tensors[name]) + 0.5
    return Predictor(header, tensors)


def make_predictor(dims, path, seed=0, hidden=16, kind="single", **header_overrides):
    h = dict(kind=kind, criterion="plainact", num_layers=dims.num_layers, num_heads=dims.num_heads,
             num_kv_heads=dims.num_kv_heads, hidden_size=dims.hidden_size, intermediate_size=dims.intermediate_size,
             head_hidden=hidden, neuron_hidden=hidden)
    header = PredictorHeader(**{**h, **header_overrides})
    rng = np.random.default_rng(seed)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(header).items()}
    for name in tensors:
        if name.endswith("input_std"):
            tensors[name] = np.abs(tensors[name]) + 0.5
    predictor = Predictor(header, tensors)
    predictor.save(path)
    return predictor


def run_steps(session, ids, prompt_len):
    """Prefill ids[:, :prompt_len], then decode the rest one token at a time -> logits (B, S, V)."""
    B, S = ids.shape
    pos = np.tile(np.arange(S), (B, 1))
    logits, cache = session.forward(ids[:, :prompt_len], np.ones((B, prompt_len), np.int64), pos[:, :prompt_len],
                                    session.empty_cache(B))
    steps = [logits]
    for t in range(prompt_len, S):
        step, cache = session.forward(ids[:, t:t + 1], np.ones((B, t + 1), np.int64), pos[:, t:t + 1], cache)
        steps.append(step)
    return np.concatenate(steps, axis=1)
