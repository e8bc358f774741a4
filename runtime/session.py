"""``Session``: a compiled model on ONNX Runtime, stepped with IOBinding.

The present KV outputs of one step are bound, as ONNX Runtime values, to the
past inputs of the next, so the cache never round-trips through numpy (and,
with the CUDA provider, never leaves the GPU). Only the logits are copied out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.errors import BackendUnavailableError, CompiledModelError
from planforge.runtime.backend import positions_from_mask
from planforge.runtime.manifest import Manifest

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class KVCache:
    """Per-layer present key/value tensors as ONNX Runtime values; ``length`` positions each."""

    values: list  # [key_0, value_0, key_1, value_1, ...] as OrtValue, each (B, Hkv, P, D)
    length: int


def _load_session(path: Path, provider: str, threads: Optional[int]):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise BackendUnavailableError(
            f"the {provider} provider ({PROVIDERS[provider]}) is not in this onnxruntime build "
            f"(available: {', '.join(available)}). For CUDA, `pip install onnxruntime-gpu` on a machine "
            "with an NVIDIA GPU; otherwise use --provider cpu."
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped pybind errors
        raise CompiledModelError(
            f"{path} could not be loaded by ONNX Runtime; it is corrupt or truncated ({str(exc).splitlines()[0]}). "
            "Re-export it with `planforge export`."
        ) from None


class Session:
    """A compiled model directory loaded on ONNX Runtime (implements ``runtime.backend.Backend``)."""

    def __init__(self, model_dir: str | Path, provider: str = "cpu", threads: Optional[int] = None):
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}.")
        self.model_dir = Path(model_dir)
        self.manifest = Manifest.load(self.model_dir)
        if self.manifest.dtype == "bf16":
            raise BackendUnavailableError(
                "this model was exported with --dtype bf16, which ONNX Runtime's Python API cannot feed a KV "
                "cache for. Run it with TensorRT, or re-export with --dtype fp16 or fp32."
            )
        model_path = self.model_dir / constants.MODEL_FILE
        if not model_path.is_file():
            raise CompiledModelError(f"{self.model_dir} has no {constants.MODEL_FILE}. Re-export the model.")
        self.provider = provider
        self._device = "cuda" if provider == "cuda" else "cpu"
        self._session = _load_session(model_path, provider, threads)
        dims = self.manifest.dims
        self._kv_names = [name for i in range(dims.num_layers)
                          for name in (constants.past_key(i), constants.past_value(i))]
        self._present_names = [name for i in range(dims.num_layers)
                               for name in (constants.present_key(i), constants.present_value(i))]
        self._kv_dtype = np.dtype(self.manifest.kv_numpy_dtype)

    def empty_cache(self, batch_size: int) -> KVCache:
        import onnxruntime as ort

        d = self.manifest.dims
        empty = np.zeros((batch_size, d.num_kv_heads, 0, d.head_dim), dtype=self._kv_dtype)
        value = ort.OrtValue.ortvalue_from_numpy(empty, self._device, 0)
        return KVCache(values=[value] * len(self._kv_names), length=0)

    def repeat_cache(self, cache: KVCache, times: int) -> KVCache:
        """A cache for ``times`` × the batch, each sequence repeated (e.g. one shared prompt, many continuations)."""
        import onnxruntime as ort

        values = [ort.OrtValue.ortvalue_from_numpy(np.repeat(v.numpy(), times, axis=0), self._device, 0)
                  for v in cache.values]
        return KVCache(values=values, length=cache.length)

    def forward(self, input_ids, attention_mask, position_ids, cache: KVCache):
        assert input_ids.shape == position_ids.shape, (input_ids.shape, position_ids.shape)
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
        binding = self._session.io_binding()
        binding.bind_cpu_input(constants.INPUT_IDS, np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input(constants.ATTENTION_MASK, np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input(constants.POSITION_IDS, np.ascontiguousarray(position_ids, dtype=np.int64))
        for name, value in zip(self._kv_names, cache.values):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(constants.LOGITS, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # in bind order: logits, then the presents
        logits = outputs[0].numpy()  # (B, S, V)
        # P + S positions, or at most S + W for a streaming model (sinks + rolling window).
        return logits, KVCache(values=list(outputs[1:]), length=outputs[1].shape()[2])

    def run_prefill(self, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Logits for a batch of (already padded) token ids, with no past: a convenience for evaluation."""
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        logits, _ = self.forward(input_ids, attention_mask, positions_from_mask(attention_mask),
                                 self.empty_cache(input_ids.shape[0]))
        return logits
