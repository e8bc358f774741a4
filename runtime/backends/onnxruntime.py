"""The ONNX Runtime backend: a compiled model's ``model.onnx`` stepped with IOBinding.

It runs the portable graph (standard ops and QDQ) and the graph lowered onto ONNX
Runtime's own kernels (``optimize --target onnxruntime``: ``MatMulNBits``,
``MatMulInteger``, ``GatherBlockQuantized``, ...). The present KV outputs of one
step are fed, as ONNX Runtime values, to the past inputs of the next, so the
cache never round-trips through numpy (and, with the CUDA provider, never leaves
the GPU). Only the logits are copied out.

The step costs one call into ONNX Runtime: on the CPU the binding's C-level
``run_with_ort_values``, which skips the Python wrapper's per-call validation (half
the per-step overhead measured on the reference model: 152 vs 321 µs for IOBinding,
``samples/bench_peers.py``); with CUDA an IOBinding that keeps the presents on the GPU.
The opset-23 ``Attention`` writes ``present = concat(past, new)``, so the cache
cannot share one buffer between steps; the graph's own streaming cache bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.errors import BackendUnavailableError, CompiledModelError, ContribOpUnavailableError
from planforge.manifest import Manifest, check_graph_inputs
from planforge.runtime.backends.base import Backend
from planforge.runtime.backends.registry import register_backend

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
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
class OnnxRuntimeBackend(Backend):
    """A compiled model directory loaded on ONNX Runtime."""

    def __init__(self, model_dir: Path, manifest: Manifest, device: str = "cpu", threads: Optional[int] = None):
        self.model_dir, self.manifest, self.device = Path(model_dir), manifest, device
        if manifest.dtype == "bf16":
            raise BackendUnavailableError(
                "this model was exported with --dtype bf16, which ONNX Runtime's Python API cannot feed a KV "
                "cache for. Run it with TensorRT, or re-export with --dtype fp16 or fp32.")
        model_path = self.model_dir / constants.MODEL_FILE
        if not model_path.is_file():
            raise CompiledModelError(f"{self.model_dir} has no {constants.MODEL_FILE}. Re-export the model.")
        self._session = _load_session(model_path, device, threads, manifest)
        check_graph_inputs(manifest, {i.name: [d if isinstance(d, int) else None for d in i.shape]
                                      for i in self._session.get_inputs()}, self.model_dir)
        dims = manifest.dims
        self._past_names = [name for i in range(dims.num_layers)
                            for name in (constants.past_key(i), constants.past_value(i))]
        self._present_names = [name for i in range(dims.num_layers)
                               for name in (constants.present_key(i), constants.present_value(i))]
        self._kv_dtype = np.dtype(manifest.kv_numpy_dtype)
        self._output_names = [constants.LOGITS] + self._present_names

    def _value(self, array: np.ndarray):
        """A copy of ``array`` in memory ONNX Runtime owns (a value made from numpy would only borrow it)."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self.device, 0)
        value.update_inplace(np.ascontiguousarray(array))
        return value._ortvalue

    def empty_cache(self, batch_size: int) -> KVCache:
        d = self.manifest.dims
        empty = self._value(np.zeros((batch_size, d.num_kv_heads, 0, d.head_dim), dtype=self._kv_dtype))
        return KVCache(values=[empty] * len(self._past_names), length=0)

    def repeat_cache(self, cache: KVCache, times: int) -> KVCache:
        values = [self._value(np.repeat(v.numpy(), times, axis=0)) for v in cache.values]
        return KVCache(values=values, length=cache.length)

    def forward(self, input_ids, attention_mask, position_ids, cache: KVCache, last_only: bool = False):
        assert input_ids.shape == position_ids.shape, (input_ids.shape, position_ids.shape)
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
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
        values = self._session._sess.run_with_ort_values(feeds, self._output_names, None)
        return [values[i] for i in range(len(self._output_names))]  # indexing: 5x faster than list() here

    def _run_bound(self, feeds: dict) -> list:
        """The presents stay on the device; the logits come to the host."""
        import onnxruntime as ort

        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue(value))
        binding.bind_output(constants.LOGITS, "cpu")
        for name in self._present_names:
            binding.bind_output(name, self.device)
        self._session.run_with_iobinding(binding)
        return [value._ortvalue for value in binding.get_outputs()]
