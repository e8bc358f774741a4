"""Calibration: run the exported model on ONNX Runtime and record what every linear sees.

A temporary copy of the graph gets each linear's ``MatMul`` input as an extra
output (linears that share an input, such as q/k/v, share one output). Per input
we keep the per-column max |x| over all calibration tokens (QUIK's outlier
criterion) and, for GPTQ, ``X^T X`` accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx

from planforge import constants
from planforge.graph_passes.schemes import CalibrationError
from planforge.manifest import KV_NUMPY_DTYPES, Manifest


@dataclass
class LinearStats:
    absmax: np.ndarray  # (K,) float64, max |x| per input column
    hessian: Optional[np.ndarray]  # (K, K) float64, sum of x^T x, or None
    tokens: int = 0

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)  # (T, K)
        self.absmax = np.maximum(self.absmax, np.abs(x).max(axis=0))
        if self.hessian is not None:
            self.hessian += x.T @ x
        self.tokens += len(x)


def calibration_samples(ids: list[int], seq_len: int, count: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of ``seq_len`` tokens, at most ``count`` of them."""
    windows = len(ids) // seq_len
    if windows == 0:
        raise CalibrationError(f"the calibration text has {len(ids)} tokens, fewer than one sample of {seq_len}; "
                               "give a longer --calib text or a smaller --calib-seq-len.")
    return [np.array(ids[i * seq_len:(i + 1) * seq_len], dtype=np.int64) for i in range(min(windows, count))]


def _linear_inputs(model: onnx.ModelProto, weights: set[str]) -> dict[str, list[str]]:
    """MatMul input tensor -> the linear weights it multiplies."""
    inputs: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            inputs.setdefault(node.input[0], []).append(node.input[1])
    return inputs


def calibrate(model_dir: Path, manifest: Manifest, samples: list[np.ndarray], hessians: bool,
              on_sample: Callable[[int], None] = lambda i: None) -> dict[str, LinearStats]:
    """Statistics per linear weight name, from running ``samples`` (each (L,) int64) one at a time."""
    import onnxruntime as ort

    model = onnx.load(str(Path(model_dir) / constants.MODEL_FILE))
    inputs = _linear_inputs(model, {lin["weight"] for lin in manifest.linears})
    if not inputs:
        raise CalibrationError(f"{model_dir}/model.onnx has no MatMul on the linears listed in planforge.json.")
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(manifest.kv_numpy_dtype))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, elem, None) for name in inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = manifest.dims
    stats = {name: LinearStats(np.zeros(dims_k := _width(manifest, ws[0])),
                               np.zeros((dims_k, dims_k)) if hessians else None)
             for name, ws in inputs.items()}
    empty = np.zeros((1, dims.num_kv_heads, 0, dims.head_dim), dtype=KV_NUMPY_DTYPES[manifest.dtype])
    names = list(inputs)
    for i, ids in enumerate(samples):
        feeds = {constants.INPUT_IDS: ids[None], constants.ATTENTION_MASK: np.ones_like(ids)[None],
                 constants.POSITION_IDS: np.arange(len(ids), dtype=np.int64)[None]}
        for layer in range(dims.num_layers):
            feeds[constants.past_key(layer)] = feeds[constants.past_value(layer)] = empty
        for name, value in zip(names, session.run(names, feeds)):
            stats[name].update(value)
        on_sample(i + 1)
    return {w: stats[name] for name, ws in inputs.items() for w in ws}


def _width(manifest: Manifest, weight: str) -> int:
    return next(lin["in_features"] for lin in manifest.linears if lin["weight"] == weight)
