"""The ONNX Runtime backend: a compiled model's ``model.onnx`` stepped with IOBinding.

It runs the portable graph (standard ops and QDQ) and the graph lowered onto ONNX
Runtime's own kernels (``optimize --target onnxruntime``: ``MatMulNBits``,
``MatMulInteger``, ``GatherBlockQuantized``, ...). The present KV outputs of one
step are fed, as ONNX Runtime values, to the past inputs of the next, so the
cache never round-trips through numpy (and, with the CUDA provider, never leaves
the GPU). Only the logits are copied out.

Two cache contracts, by the graph:

- the graph lowered onto ``GroupQueryAttention`` (``manifest.io["past_present_share_buffer"]``,
  ``optimize --target onnxruntime``): one preallocated buffer per layer and K/V, bound once as
  both the past input and the present output, so the kernel writes each new token in place
  (``in_place.py``: a left-padded prefill runs row by row, since a row's tokens must start at
  slot 0). A decode step then binds three small inputs and the logits, and runs. CPU only.
- the portable graph: opset-23 ``Attention`` writes ``present = concat(past, new)``, a new
  tensor per step, so the presents of one step are fed, as ONNX Runtime values, to the past
  inputs of the next (one C-level ``run_with_ort_values`` call; with CUDA an IOBinding that
  keeps them on the GPU). The graph's own streaming cache bounds it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.errors import BackendUnavailableError, CompiledModelError, ContribOpUnavailableError
from planforge.manifest import Manifest, check_graph_inputs
from planforge.runtime.backends.base import Backend
from planforge.runtime.backends.in_place import InPlaceContract, InPlaceKVCache
from planforge.runtime.backends.registry import register_backend

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_UNOPENED = object()
# What ONNX Runtime prints when a graph uses an op its build has no kernel for.
_MISSING_KERNEL = ("Could not find an implementation", "is not a registered function/op", "No opset import for domain")


@dataclass
class KVCache:
    """Per-layer present key/value tensors as ONNX Runtime (C-level) values; ``length`` positions each."""

    values: list  # [key_0, value_0, key_1, value_1, ...], each (B, Hkv, P, D)
    length: int


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())


def _check_contrib_ops(manifest: Manifest, ort_version: str) -> None:
    """Refuses a lowered model on an ONNX Runtime older than the one its contrib ops need."""
    for entry in manifest.passes:
        needs = entry.get("settings", {}).get("onnxruntime")
        if not needs:
            continue
        if _version_tuple(ort_version) < _version_tuple(needs["min_version"]):
            raise ContribOpUnavailableError(
                f"this model is lowered onto ONNX Runtime's {', '.join(needs['ops'])} (com.microsoft), which need "
                f"onnxruntime >= {needs['min_version']}; this is {ort_version}. `pip install -U onnxruntime`, or "
                "optimize the model with --target portable.")


def _load_session(path: Path, provider: str, threads: Optional[int], manifest: Manifest):
    import onnxruntime as ort

    _check_contrib_ops(manifest, ort.__version__)
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise BackendUnavailableError(
            f"the {provider} device needs ONNX Runtime's {PROVIDERS[provider]}, which this onnxruntime build lacks "
            f"(available: {', '.join(available)}). For CUDA, `pip install onnxruntime-gpu` on a machine with an "
            "NVIDIA GPU; otherwise use --device cpu.")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped pybind errors
        first = str(exc).splitlines()[0]
        if any(marker in str(exc) for marker in _MISSING_KERNEL):
            raise ContribOpUnavailableError(
                f"onnxruntime {ort.__version__} cannot run {path}: {first}. `pip install -U onnxruntime`, or "
                "optimize the model with --target portable.") from None
        raise CompiledModelError(
            f"{path} could not be loaded by ONNX Runtime; it is corrupt or truncated ({first}). "
            "Re-export it with `planforge export`.") from None


@register_backend("onnxruntime", targets=("portable", "onnxruntime"), default_for=("portable", "onnxruntime"),
                  devices=("cpu", "cuda"), requires=("onnxruntime",),
                  install="`pip install onnxruntime` (CPU), or `pip install onnxruntime-gpu` for CUDA.")
class OnnxRuntimeBackend(InPlaceContract, Backend):
    """A compiled model directory loaded on ONNX Runtime."""

    _streaming_slots = None  # a streaming graph keeps Attention (ort_attention), so shared buffers never roll

    def __init__(self, model_dir: Path, manifest: Manifest, device: str = "cpu", threads: Optional[int] = None):
        self.model_dir, self.manifest, self.device = Path(model_dir), manifest, device
        if manifest.dtype == "bf16":
            raise BackendUnavailableError(
                "this model was exported with --dtype bf16, which ONNX Runtime's Python API cannot feed a KV "
                "cache for. Run it with TensorRT, or re-export with --dtype fp16 or fp32.")
        self._shared = bool(manifest.io.get("past_present_share_buffer", False))
        if self._shared and device != "cpu":
            raise BackendUnavailableError(
                f"{self.model_dir} is lowered for ONNX Runtime on the CPU (GroupQueryAttention over shared cache "
                "buffers). Run it with --device cpu, or optimize with --target portable for other devices.")
        model_path = self.model_dir / constants.MODEL_FILE
        if not model_path.is_file():
            raise CompiledModelError(f"{self.model_dir} has no {constants.MODEL_FILE}. Re-export the model.")
        self._session = _load_session(model_path, device, threads, manifest)
        self._threads = threads
        self._native: object = _UNOPENED
        check_graph_inputs(manifest, {i.name: [d if isinstance(d, int) else None for d in i.shape]
                                      for i in self._session.get_inputs()}, self.model_dir)
        dims = manifest.dims
        self._past_names = [name for i in range(dims.num_layers)
                            for name in (constants.past_key(i), constants.past_value(i))]
        self._present_names = [name for i in range(dims.num_layers)
                               for name in (constants.present_key(i), constants.present_value(i))]
        self._kv_dtype = np.dtype(manifest.kv_numpy_dtype)
        self._output_names = [constants.LOGITS] + self._present_names
        if self._shared:
            self._binding = _c_api().SessionIOBinding(self._session._sess)
            self._bound: Optional[tuple] = None  # (the buffers bound now, their OrtValues)
            self._ones = np.ones(0, np.int64)  # the all-ones masks of unpadded steps are views of this

    def native_loop(self):
        """On the CPU, the C++ runtime's ONNX Runtime backend, with the same cache contract (its own session of the
        same model.onnx, opened on first use, which releases this backend's); None on CUDA, or where the C++
        loop is unavailable."""
        if self.device != "cpu":
            return None
        if self._native is _UNOPENED:
            from planforge.runtime import native

            self._native = native.open_loop(self.model_dir, self._threads)
            if self._native is not None:  # one session in memory: forward() reopens this one if it is called
                self._session = self._binding = self._bound = None
        return self._native

    def _ort(self):
        """The Python session, reopened if the native loop released it."""
        if self._session is None:
            self._session = _load_session(self.model_dir / constants.MODEL_FILE, self.device, self._threads,
                                          self.manifest)
            if self._shared:
                self._binding = _c_api().SessionIOBinding(self._session._sess)
        return self._session

    def _value(self, array: np.ndarray):
        """A copy of ``array`` in memory ONNX Runtime owns (a value made from numpy would only borrow it)."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self.device, 0)
        value.update_inplace(np.ascontiguousarray(array))
        return value._ortvalue

    def empty_cache(self, batch_size: int) -> KVCache | InPlaceKVCache:
        if self._shared:
            return self._empty_in_place(batch_size)
        d = self.manifest.dims
        empty = self._value(np.zeros((batch_size, d.num_kv_heads, 0, d.head_dim), dtype=self._kv_dtype))
        return KVCache(values=[empty] * len(self._past_names), length=0)

    def repeat_cache(self, cache: KVCache | InPlaceKVCache, times: int) -> KVCache | InPlaceKVCache:
        if isinstance(cache, InPlaceKVCache):
            return self._repeat_in_place(cache, times)
        values = [self._value(np.repeat(v.numpy(), times, axis=0)) for v in cache.values]
        return KVCache(values=values, length=cache.length)

    def forward(self, input_ids, attention_mask, position_ids, cache: KVCache, last_only: bool = False):
        assert input_ids.shape == position_ids.shape, (input_ids.shape, position_ids.shape)
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
        if self._shared:
            return self._forward_in_place(np.asarray(input_ids), np.asarray(attention_mask),
                                          np.asarray(position_ids), cache, last_only)
        import onnxruntime as ort

        # These values borrow the arrays' memory: ``inputs`` keeps the arrays alive until the run returns.
        inputs = [np.ascontiguousarray(a, dtype=np.int64) for a in (input_ids, attention_mask, position_ids)]
        feeds = {name: ort.OrtValue.ortvalue_from_numpy(a)._ortvalue
                 for name, a in zip((constants.INPUT_IDS, constants.ATTENTION_MASK, constants.POSITION_IDS), inputs)}
        feeds.update(zip(self._past_names, cache.values))
        outputs = self._run_cpu(feeds) if self.device == "cpu" else self._run_bound(feeds)
        logits = outputs[0].numpy()  # (B, S, V)
        if last_only:
            logits = logits[:, -1:]
        # P + S positions, or at most S + W for a streaming model (sinks + rolling window).
        return logits, KVCache(values=list(outputs[1:]), length=outputs[1].shape()[2])

    def _run_cpu(self, feeds: dict) -> list:
        values = self._ort()._sess.run_with_ort_values(feeds, self._output_names, None)
        return [values[i] for i in range(len(self._output_names))]  # indexing: 5x faster than list() here

    def _run_bound(self, feeds: dict) -> list:
        """The presents stay on the device; the logits come to the host."""
        import onnxruntime as ort

        session = self._ort()
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue(value))
        binding.bind_output(constants.LOGITS, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
        return [value._ortvalue for value in binding.get_outputs()]

    # ---- shared cache buffers (GroupQueryAttention) ----------------------------------------------
    def _cache_capacities(self) -> list[int]:
        return [self.manifest.dims.max_seq_len] * self.manifest.dims.num_layers

    def _zeros(self, shape: tuple) -> np.ndarray:
        return np.zeros(shape, dtype=self._kv_dtype)

    @staticmethod
    def _repeat_rows(buffer: np.ndarray, times: int) -> np.ndarray:
        return np.repeat(buffer, times, axis=0)

    def _step(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, buffers: list,
              last_only: bool = False) -> np.ndarray:
        """One run over shared buffers: the kernel writes the new tokens at slots ``lengths`` (+ s); logits.

        A decode step is a few Python statements around one C call: the Python between two runs costs
        ~10x what it costs in a warm loop, because each run evicts it from the caches (docs/architecture.md).
        """
        session = self._ort()
        C, cpu, binding = _c_api(), _cpu_device(), self._binding
        B, S = ids.shape
        # The graph reads each sequence's length from the mask's sum and the step's span from its width
        # (ort_attention); the tokens of sequence b are its slots [0, lengths[b] + S).
        seen = lengths + S
        width = int(seen.max())
        if width > self.manifest.dims.max_seq_len:
            self._check_capacity(lengths, S)  # raises, with the numbers
        if self._bound is None or self._bound[0] is not buffers:  # a new cache, or one row's views of it
            values = [C.OrtValue.ortvalue_from_numpy(buffer, cpu) for buffer in buffers]
            for past, present, value in zip(self._past_names, self._present_names, values):
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            self._bound = (buffers, values)  # the numpy buffers own the memory the values borrow
        if (seen == width).all():
            if self._ones.size < B * width:
                self._ones = np.ones(B * self.manifest.dims.max_seq_len, np.int64)
            mask = self._ones[:B * width].reshape(B, width)
        else:
            mask = (np.arange(width) < seen[:, None]).astype(np.int64)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        for name, array in ((constants.INPUT_IDS, ids), (constants.ATTENTION_MASK, mask),
                            (constants.POSITION_IDS, positions)):
            binding.bind_ortvalue_input(name, C.OrtValue.ortvalue_from_numpy(array, cpu))
        # A new logits buffer per run: the caller keeps what it is given (cheaper than copying a bound one).
        logits = np.empty((B, S, self.manifest.dims.vocab_size), np.float32)
        binding.bind_ortvalue_output(constants.LOGITS, C.OrtValue.ortvalue_from_numpy(logits, cpu))
        session._sess.run_with_iobinding(binding, None)
        return logits[:, -1:] if last_only and S > 1 else logits


def _c_api():
    from onnxruntime.capi import _pybind_state

    return _pybind_state


@functools.cache
def _cpu_device():
    C = _c_api()
    return C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
