"""The TensorRT backend: an engine directory of ``planforge build --target tensorrt``, run on the GPU.

Opening one checks, before TensorRT reads the engine, that it was built with this TensorRT and
for this GPU kind and that its plugin ops are this planforge's (``runtime/tensorrt_engine.py``),
then registers planforge's plugins and deserializes the engine. The caches are torch CUDA
buffers, bound to the engine's cache inputs and, aliased, to its outputs, so ``KVCacheUpdate``
writes them in place; the steps follow the lowered contract (``in_place.py``). Decode steps
replay a captured CUDA graph when every plugin is AOT: a Python plugin's callback cannot be
captured.

Written against the TensorRT >= 10.9 Python API (name-based tensors, ``execute_async_v3``);
not run on a machine with TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from planforge import constants
from planforge.errors import BackendUnavailableError
from planforge.manifest import Manifest
from planforge.runtime.backends.base import Backend
from planforge.runtime.backends.in_place import InPlaceContract, InPlaceKVCache
from planforge.runtime.backends.registry import register_backend
from planforge.runtime.tensorrt_engine import DECODE, PREFILL, check_engine, check_prompt, deserialize_failure


@register_backend("tensorrt", targets=("tensorrt",), default_for=("tensorrt",), devices=("cuda",),
                  requires=("tensorrt", "torch"),
                  install="`pip install tensorrt` (TensorRT >= 10.9) and a CUDA build of torch, on an NVIDIA GPU.")
class TensorRTBackend(InPlaceContract, Backend):
    def __init__(self, model_dir: Path, manifest: Manifest, device: str = "cuda", threads: Optional[int] = None,
                 cuda_graphs: bool = True):
        import tensorrt as trt
        import torch

        from planforge.plugins.registry import load_tensorrt_plugins
        from planforge.runtime.tensorrt_engine import _CollectingLogger

        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs an NVIDIA GPU and a CUDA build of torch; this "
                                          f"torch {torch.__version__} sees none.")
        self.model_dir, self.manifest, self.device = Path(model_dir), manifest, device
        engine_file = check_engine(self.model_dir, manifest, trt.__version__, torch.cuda.get_device_capability())
        forms = load_tensorrt_plugins()
        self._logger = _CollectingLogger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self._engine is None:
            raise deserialize_failure(engine_file, manifest, self._logger.errors)
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._kv_dtype = getattr(torch, manifest.kv_numpy_dtype)
        self._streaming_slots = manifest.streaming["cache_slots"] if manifest.streaming else None
        self._profiles = manifest.tensorrt["profiles"]
        n = manifest.dims.num_layers
        self._cache_names = [name for i in range(n) for name in (constants.cache_key(i), constants.cache_value(i))]
        self._cache_outputs = [name for i in range(n) for name in (constants.cache_key_out(i),
                                                                    constants.cache_value_out(i))]
        self._graph_decode = cuda_graphs and all(forms[key] == "aot" for key in manifest.plugin_ops)
        self._graphs: dict = {}  # batch size -> (CUDA graph, its input and logits buffers, the buffers it binds)

    def empty_cache(self, batch_size: int) -> InPlaceKVCache:
        return self._empty_in_place(batch_size)

    def repeat_cache(self, cache: InPlaceKVCache, times: int) -> InPlaceKVCache:
        return self._repeat_in_place(cache, times)

    def forward(self, input_ids, attention_mask, position_ids, cache, last_only: bool = False):
        assert attention_mask.shape[1] == cache.length + input_ids.shape[1], "mask must cover past + new tokens"
        return self._forward_in_place(np.asarray(input_ids), np.asarray(attention_mask), np.asarray(position_ids),
                                      cache, last_only)

    def _step(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray, buffers: list,
              last_only: bool = False) -> np.ndarray:
        import torch

        B, S = ids.shape
        self._check_capacity(lengths, S)
        check_prompt(self._profiles, B, S)
        feeds = {constants.INPUT_IDS: torch.as_tensor(ids, dtype=torch.int64, device=self.device),
                 constants.POSITION_IDS: torch.as_tensor(positions, dtype=torch.int64, device=self.device),
                 constants.PAST_LENGTHS: torch.as_tensor(lengths, dtype=torch.int32, device=self.device)}
        if S == 1 and self._graph_decode:
            logits = self._graphed_decode(feeds, buffers)
        else:
            logits = torch.empty((B, S, self.manifest.dims.vocab_size), dtype=torch.float32, device=self.device)
            self._bind(PREFILL if S > 1 else DECODE, feeds, buffers, logits)
            with torch.cuda.stream(self._stream):
                self._enqueue()
            self._stream.synchronize()
        return (logits[:, -1:] if last_only else logits).cpu().numpy()

    def _bind(self, profile: str, feeds: dict, buffers: list, logits) -> None:
        """Selects the profile and points every engine tensor at its buffer (the cache outputs alias the inputs)."""
        ctx = self._context
        ctx.set_optimization_profile_async([PREFILL, DECODE].index(profile), self._stream.cuda_stream)
        for name, tensor in list(feeds.items()) + list(zip(self._cache_names, buffers)):
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in zip(self._cache_outputs, buffers):
            ctx.set_tensor_address(name, tensor.data_ptr())
        ctx.set_tensor_address(constants.LOGITS, logits.data_ptr())

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise BackendUnavailableError(f"TensorRT failed to run {self.model_dir}: "
                                          f"{'; '.join(self._logger.errors[-3:]) or 'no reason given'}")

    def _graphed_decode(self, feeds: dict, buffers: list):
        """Decode on a CUDA graph captured once per batch size and set of cache buffers: the step's ids,
        positions and lengths are copied into the captured inputs, then the graph replays."""
        import torch

        B = feeds[constants.INPUT_IDS].shape[0]
        key = (B, tuple(b.data_ptr() for b in buffers))
        if key not in self._graphs:
            static = {name: t.clone() for name, t in feeds.items()}
            logits = torch.empty((B, 1, self.manifest.dims.vocab_size), dtype=torch.float32, device=self.device)
            self._bind(DECODE, static, buffers, logits)
            with torch.cuda.stream(self._stream):
                self._enqueue()  # once outside capture: TensorRT allocates what it needs on the first run
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
            self._graphs = {key: (graph, static, logits)}  # one live capture: the cache buffers change rarely
        graph, static, logits = self._graphs[key]
        with torch.cuda.stream(self._stream):
            for name, tensor in feeds.items():
                static[name].copy_(tensor)
            graph.replay()
        self._stream.synchronize()
        return logits
