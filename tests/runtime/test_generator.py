"""Generator against transformers' generate, and batch/padding invariance."""

import numpy as np
import pytest
import torch

from planforge.errors import InvalidPromptError, PromptTooLongError
from planforge.runtime import GenerationConfig, Generator, SamplingConfig, open_backend

FAMILIES = ("llama", "mistral", "qwen2", "gpt2")


def _prompts(seed: int, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 300, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers_generate(family, tiny_model, hf_model):
    source, compiled = tiny_model(family)
    prompt = _prompts(0, [11])[0]
    config = GenerationConfig(max_new_tokens=32, ignore_eos=True)
    ours = Generator(open_backend(compiled)).generate([prompt], config).tokens[0]
    with torch.no_grad():
        ref = hf_model(source).generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                        do_sample=False, max_new_tokens=32, min_new_tokens=32)
    assert ours == ref[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_prompt_alone(family, tiny_model):
    generator = Generator(open_backend(tiny_model(family)[1]))
    prompts = _prompts(1, [5, 17, 9])
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    batched = generator.generate(prompts, config).tokens
    alone = [generator.generate([p], config).tokens[0] for p in prompts]
    assert batched == alone


def test_streaming_callback_sees_every_token_in_order(tiny_model):
    generator = Generator(open_backend(tiny_model("llama")[1]))
    seen = []
    result = generator.generate(_prompts(2, [4, 6]), GenerationConfig(max_new_tokens=5, ignore_eos=True),
                                on_token=lambda row, token: seen.append((row, token)))
    for row in range(2):
        assert [t for r, t in seen if r == row] == result.tokens[row]


def test_stop_tokens_end_generation(tiny_model):
    generator = Generator(open_backend(tiny_model("llama")[1]))
    prompt = _prompts(3, [8])[0]
    free = generator.generate([prompt], GenerationConfig(max_new_tokens=10, ignore_eos=True)).tokens[0]
    stop = free[4]
    stopped = generator.generate([prompt], GenerationConfig(max_new_tokens=10, ignore_eos=True, stop_token_ids=(stop,)))
    first = free.index(stop)
    assert stopped.tokens[0] == free[: first + 1]
    assert stopped.finish_reasons == ["stop"]


def test_seeded_sampling_is_reproducible_and_seed_dependent(tiny_model):
    generator = Generator(open_backend(tiny_model("llama")[1]))
    prompt = _prompts(4, [6])
    run = lambda seed: generator.generate(prompt, GenerationConfig(  # noqa: E731
        max_new_tokens=16, ignore_eos=True,
        sampling=SamplingConfig(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=seed))).tokens[0]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_generation_stops_at_max_seq_len(tiny_model):
    generator = Generator(open_backend(tiny_model("llama")[1]))  # exported with max_seq_len 256
    result = generator.generate(_prompts(5, [250]), GenerationConfig(max_new_tokens=20, ignore_eos=True))
    assert len(result.tokens[0]) == 7  # 250 prompt + 6 fed back fills 256; the 7th is sampled but not fed
    assert result.finish_reasons == ["max_seq_len"]


def test_bad_prompts_get_specific_errors(tiny_model):
    generator = Generator(open_backend(tiny_model("llama")[1]))
    with pytest.raises(PromptTooLongError, match="max-seq-len"):
        generator.generate(_prompts(6, [257]))
    with pytest.raises(InvalidPromptError, match="empty"):
        generator.generate([[]])
    with pytest.raises(InvalidPromptError, match="vocabulary"):
        generator.generate([[1, 99999]])


@pytest.mark.parametrize("prompts", ["hello", ["hello"], [[1, 2], "x"], [[1.5, 2]]])
def test_text_where_token_ids_belong_is_refused(tiny_model, prompts):
    from planforge.errors import InvalidPromptError
    from planforge.runtime import Generator, open_backend

    with pytest.raises(InvalidPromptError, match="encode text first"):
        Generator(open_backend(tiny_model("llama")[1])).generate(prompts)
