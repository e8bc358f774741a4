"""Sampling filters against transformers' logits processors, and the sampler's distribution."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from planforge.errors import InvalidGenerationConfigError
from planforge.runtime.sampling import Sampler, SamplingConfig, filter_logits, softmax


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 20, 0.5), (1.0, 0, 0.05)])
def test_filter_keeps_the_same_tokens_as_transformers(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32) * 3
    ours = filter_logits(logits, SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    ref = torch.tensor(logits, dtype=torch.float64)
    ref = TemperatureLogitsWarper(temperature)(None, ref)
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    np.testing.assert_array_equal(np.isfinite(ours), torch.isfinite(ref).numpy())
    kept = np.isfinite(ours)
    np.testing.assert_allclose(ours[kept], ref.numpy()[kept], rtol=1e-12)


def test_sampler_frequencies_follow_the_softmax():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    sampler = Sampler(SamplingConfig(do_sample=True, temperature=1.0, seed=0))
    draws = np.array([sampler(logits)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    # 20k draws: the standard error of each frequency is below 0.0035; 0.015 is > 4 sigma.
    np.testing.assert_allclose(freq, softmax(logits)[0], atol=0.015)


def test_greedy_and_top_k_1_agree():
    logits = np.random.default_rng(1).normal(size=(3, 50)).astype(np.float32)
    greedy = Sampler(SamplingConfig())(logits)
    top1 = Sampler(SamplingConfig(do_sample=True, top_k=1, seed=3))(logits)
    np.testing.assert_array_equal(greedy, top1)
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InvalidGenerationConfigError):
        SamplingConfig(do_sample=True, **kwargs)
