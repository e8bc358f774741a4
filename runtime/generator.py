"""``Generator``: prefill, then a decode loop over the KV cache, for a left-padded batch.

A streaming model (``optimize --streaming``, ``manifest.streaming``) keeps at most
S + W cache positions, so prompts and generations may be of any length. Its
prompt fills the cache in one step, and every later token, prompt or generated,
is one step, which is exactly StreamingLLM's sink + rolling-window attention.
Its sinks are the first S cache slots of every row, so its batches are unpadded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from planforge.errors import InvalidGenerationConfigError, InvalidPromptError, PromptTooLongError
from planforge.runtime.backends.base import Backend, positions_from_mask
from planforge.runtime.sampling import Sampler, SamplingConfig

TokenCallback = Callable[[int, int], None]  # (row in the batch, new token id)
StepCallback = Callable[[int, np.ndarray], None]  # (first position of the step, its logits (B, n, V))


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's EOS ids
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise InvalidGenerationConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens per prompt, a stop token included when one ended it
    finish_reasons: list[str]  # "stop", "length" (max_new_tokens) or "max_seq_len"
    prompt_lengths: list[int]
    prefill_seconds: float
    decode_seconds: float
    loop: str = "python"  # which generation loop ran: "python", or "c++" (runtime/native.py)

    @property
    def new_token_count(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def decode_tokens_per_second(self) -> float:
        # Prefill produces the first token of each row; the rest come from decode steps.
        decoded = self.new_token_count - len(self.tokens)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligns prompts: ids (B, L) and attention mask (B, L), 0 on the padding."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
    return ids, mask


class Generator:
    """``native_loop=False`` keeps the loop in Python where the backend offers the C++ one (runtime/native.py)."""

    def __init__(self, backend: Backend, native_loop: bool = True):
        self.backend = backend
        self.native_loop = native_loop
        self.manifest = backend.manifest
        streaming = self.manifest.streaming
        self.cache_slots: Optional[int] = streaming["cache_slots"] if streaming else None  # None: the cache grows

    def check_prompts(self, prompts: Sequence[Sequence[int]]) -> None:
        if isinstance(prompts, (str, bytes)) or not prompts:
            raise InvalidPromptError("no prompts were given." if not prompts else
                                     "prompts are lists of token ids, one list per prompt; encode text first: "
                                     "`[Tokenizer(model_dir).encode(text)]`.")
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, (str, bytes)) or not all(isinstance(t, (int, np.integer)) for t in prompt):
                raise InvalidPromptError(f"prompt {i} is not a list of token ids; encode text first: "
                                         "`Tokenizer(model_dir).encode(text)`.")
        vocab, limit = self.manifest.dims.vocab_size, self.manifest.dims.max_seq_len
        if self.cache_slots is not None and len({len(p) for p in prompts}) > 1:
            raise InvalidPromptError(
                "this streaming model keeps the first tokens of every row as attention sinks, so its batches "
                "cannot be left-padded: give prompts of equal token length, or run them one at a time.")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise InvalidPromptError(f"prompt {i} is empty; give at least one token.")
            if len(prompt) > limit and self.cache_slots is None:
                raise PromptTooLongError(
                    f"prompt {i} has {len(prompt)} tokens but the model was exported with max_seq_len {limit}. "
                    "Shorten the prompt, re-export with a larger --max-seq-len, or stream it through a model optimized "
                    "with --streaming.")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise InvalidPromptError(f"prompt {i} holds token ids outside the vocabulary [0, {vocab}).")

    def next_mask(self, mask: np.ndarray) -> np.ndarray:
        """The attention mask of the next one-token step, given the last step's: (B, P + S) -> (B, P' + 1)."""
        if self.cache_slots is None:
            return np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        return np.ones((mask.shape[0], min(mask.shape[1], self.cache_slots) + 1), dtype=np.int64)

    def prefill(self, ids: np.ndarray, mask: np.ndarray, on_step: Optional[StepCallback] = None):
        """-> (last logits (B, V), cache, last positions (B,), the last step's mask).

        ``on_step`` sees every step's logits: one step here, or for a streaming model the cache-filling
        step and then one step per remaining prompt token.
        """
        positions = positions_from_mask(mask)  # (B, L)
        first = ids.shape[1] if self.cache_slots is None else min(ids.shape[1], self.cache_slots)
        step_mask = mask[:, :first]  # the first step fills the cache without evicting
        logits, cache = self.backend.forward(ids[:, :first], step_mask, positions[:, :first],
                                             self.backend.empty_cache(ids.shape[0]), last_only=on_step is None)
        if on_step is not None:
            on_step(0, logits)
        for t in range(first, ids.shape[1]):
            step_mask = self.next_mask(step_mask)
            logits, cache = self.backend.forward(ids[:, t:t + 1], step_mask, positions[:, t:t + 1], cache)
            if on_step is not None:
                on_step(t, logits)
        return logits[:, -1], cache, positions[:, -1], step_mask

    def decode_one_token(self, tokens: np.ndarray, mask: np.ndarray, last_positions: np.ndarray, cache):
        positions = (last_positions + 1)[:, None]  # (B, 1)
        logits, cache = self.backend.forward(tokens[:, None], mask, positions, cache)
        return logits[:, -1], cache, positions[:, 0]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig = GenerationConfig(),
        on_token: Optional[TokenCallback] = None,
        on_prefill_step: Optional[StepCallback] = None,
    ) -> GenerationResult:
        self.check_prompts(prompts)
        native = self.backend.native_loop() if self.native_loop and on_prefill_step is None else None
        if native is not None:  # the same loop in C++, no Python between two steps (runtime/native.py)
            return native.generate(prompts, config, on_token)
        stops = set(config.stop_token_ids) | (set() if config.ignore_eos else set(self.manifest.eos_token_ids))
        pad_id = self.manifest.pad_token_id if self.manifest.pad_token_id is not None else 0
        sample = Sampler(config.sampling)
        ids, mask = left_pad(prompts, pad_id)
        batch, limit = len(prompts), self.manifest.dims.max_seq_len
        tokens: list[list[int]] = [[] for _ in range(batch)]
        reasons: list[Optional[str]] = [None] * batch

        start = time.perf_counter()
        logits, cache, positions, mask = self.prefill(ids, mask, on_step=on_prefill_step)
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        while True:
            next_tokens = sample(logits)  # (B,)
            for row in range(batch):
                if reasons[row] is not None:
                    continue
                token = int(next_tokens[row])
                tokens[row].append(token)
                if on_token is not None:
                    on_token(row, token)
                if token in stops:
                    reasons[row] = "stop"
                elif len(tokens[row]) >= config.max_new_tokens:
                    reasons[row] = "length"
                elif self.cache_slots is None and mask.shape[1] + 1 > limit:
                    reasons[row] = "max_seq_len"
            if all(r is not None for r in reasons):
                break
            # Finished rows keep stepping (batch shapes stay fixed) on padding that no one reads.
            running = [r is None for r in reasons]
            feed = next_tokens if all(running) else np.where(running, next_tokens, pad_id).astype(np.int64)
            mask = self.next_mask(mask)
            logits, cache, positions = self.decode_one_token(feed, mask, positions, cache)
        decode_seconds = time.perf_counter() - start
        return GenerationResult(tokens=tokens, finish_reasons=[str(r) for r in reasons],
                                prompt_lengths=[len(p) for p in prompts],
                                prefill_seconds=prefill_seconds, decode_seconds=decode_seconds)
