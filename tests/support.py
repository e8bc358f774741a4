"""Helpers the tests share (tiny models of every family, the calibration corpus), imported as ``support``.

The fixtures that use them are in conftest.py; test modules import this module, never conftest.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama", "mistral", "qwen2", "gpt2")
VOCAB = 320
CORPUS = (
    "The quick brown fox jumps over the lazy dog. planforge compiles decoder models to ONNX. "
    "Attention with a key value cache makes decoding fast. Sliding windows bound the memory. "
) * 20


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(directory)
    return fast


def make_config(family: str, **overrides):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.1)
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
        config.architectures = ["GPT2LMHeadModel"]
    elif family in ("opt", "opt350m"):  # opt350m: opt-350m's shape, a narrow token table and post-norm blocks
        common.pop("initializer_range")
        variant = dict(word_embed_proj_dim=32, do_layer_norm_before=False) if family == "opt350m" else \
            dict(word_embed_proj_dim=64)
        config = tf.OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                              max_position_embeddings=256, init_std=0.1, **variant, **common)
        config.architectures = ["OPTForCausalLM"]
    else:
        llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, **common)
        cls, arch = {"llama": (tf.LlamaConfig, "LlamaForCausalLM"),
                     "mistral": (tf.MistralConfig, "MistralForCausalLM"),
                     "qwen2": (tf.Qwen2Config, "Qwen2ForCausalLM"),
                     "qwen3": (tf.Qwen3Config, "Qwen3ForCausalLM"),
                     "granite": (tf.GraniteConfig, "GraniteForCausalLM"),
                     "smollm3": (tf.SmolLM3Config, "SmolLM3ForCausalLM"),
                     "gemma": (tf.GemmaConfig, "GemmaForCausalLM"),
                     "gemma2": (tf.Gemma2Config, "Gemma2ForCausalLM"),
                     "gemma3": (tf.Gemma3TextConfig, "Gemma3ForCausalLM"),
                     "phi3": (tf.Phi3Config, "Phi3ForCausalLM"),
                     # no adapter of its own: exported through the structural adapter
                     "seed_oss": (tf.SeedOssConfig, "SeedOssForCausalLM")}[family]
        extra = {"mistral": dict(sliding_window=8), "qwen2": dict(num_key_value_heads=1),
                 "qwen3": dict(head_dim=32),  # head_dim != hidden / heads, as in Qwen3
                 "granite": dict(embedding_multiplier=3.0, attention_multiplier=0.2, residual_multiplier=0.4,
                                 logits_scaling=4.0),
                 "smollm3": dict(no_rope_layers=[1, 0]),  # layer 1 has no rotary (NoPE)
                 "gemma": dict(head_dim=16),
                 "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                final_logit_softcapping=3.0, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"]),
                 "gemma3": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"]),
                 "phi3": dict(original_max_position_embeddings=256),
                 "seed_oss": dict(head_dim=16, attention_bias=True)}.get(family, {})
        config = cls(**{**llama_like, **extra})
        config.architectures = [arch]
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def save_random_model(family: str, directory: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, **overrides)).eval()
    model.save_pretrained(directory)
    _tokenizer(directory)
    return directory
