"""Polygraphy runners that step a model through prefill and teacher-forced decode.

Each inference takes ``input_ids`` (1, S + K): the first S tokens are the
prefill, the last K are fed one at a time through the KV cache. Outputs are
``prefill_logits`` (1, S, V) and ``decode_{k}_logits`` (1, 1, V), so
Polygraphy's Comparator compares the KV-cache path, not only one forward pass.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from planforge import constants


def output_names(decode_steps: int) -> list[str]:
    return ["prefill_logits"] + [f"decode_{k}_logits" for k in range(1, decode_steps + 1)]


class _TeacherForcedRunner(BaseRunner):
    def __init__(self, decode_steps: int, name: str, prompt_len: Optional[int] = None):
        super().__init__(name=name, prefix="planforge")
        self.decode_steps = decode_steps
        # A fixed length lets Polygraphy's own data loader make the input (`polygraphy run`).
        self.input_len = None if prompt_len is None else prompt_len + decode_steps

    def get_input_metadata_impl(self):
        return TensorMetadata().add(constants.INPUT_IDS, dtype=np.int64, shape=(1, self.input_len))

    def infer_impl(self, feed_dict):
        ids = np.asarray(feed_dict[constants.INPUT_IDS], dtype=np.int64)  # (1, S + K)
        assert ids.shape[0] == 1 and ids.shape[1] > self.decode_steps, ids.shape
        split = ids.shape[1] - self.decode_steps
        start = time.perf_counter()
        logits = self.step_through(ids[:, :split], ids[0, split:])
        self.inference_time = time.perf_counter() - start  # Comparator sums these
        return OrderedDict(zip(output_names(self.decode_steps), logits))

    def step_through(self, prompt: np.ndarray, forced: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class BackendRunner(_TeacherForcedRunner):
    """A planforge compiled model on any registered backend (``runtime.backends``)."""

    def __init__(self, model_dir: Path, decode_steps: int, backend: Optional[str] = None, device: str = "cpu",
                 prompt_len: Optional[int] = None):
        super().__init__(decode_steps, name=f"planforge[{Path(model_dir).name}]", prompt_len=prompt_len)
        self.model_dir, self.backend_name, self.device = Path(model_dir), backend, device

    def activate_impl(self):
        from planforge.runtime.backends import open_backend

        self.backend = open_backend(self.model_dir, self.backend_name, self.device)
        self.name = f"planforge[{self.model_dir.name}, {self.backend.describe()}]"

    def deactivate_impl(self):
        del self.backend

    def step_through(self, prompt, forced):
        b = self.backend
        mask = np.ones_like(prompt)
        positions = np.arange(prompt.shape[1], dtype=np.int64)[None]
        logits, cache = b.forward(prompt, mask, positions, b.empty_cache(1))
        outputs = [logits]
        for token in forced:  # the mask covers what the cache holds (a streaming cache: S + W at most)
            mask = np.ones((1, cache.length + 1), dtype=np.int64)
            positions = positions[:, -1:] + 1
            logits, cache = b.forward(np.array([[token]], dtype=np.int64), mask, positions, cache)
            outputs.append(logits)
        return outputs


class TransformersRunner(_TeacherForcedRunner):
    """The source Hugging Face model in fp32 with its own KV cache."""

    def __init__(self, model_dir: Path, decode_steps: int):
        super().__init__(decode_steps, name=f"transformers[{Path(model_dir).name}]")
        self.model_dir = Path(model_dir)

    def activate_impl(self):
        from planforge.exporter.loading import load_model

        self.model = load_model(self.model_dir)

    def deactivate_impl(self):
        del self.model

    def step_through(self, prompt, forced):
        import torch

        from planforge.exporter.loading import forward

        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(prompt), use_cache=True)
            outputs = [out.logits.float().numpy()]
            for token in forced:
                out = forward(self.model, input_ids=torch.tensor([[int(token)]]), past_key_values=out.past_key_values,
                              use_cache=True)
                outputs.append(out.logits.float().numpy())
        return outputs
