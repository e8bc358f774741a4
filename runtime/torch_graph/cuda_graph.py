"""Decode steps replayed from a CUDA graph: one launch instead of one Python dispatch per node.

A lowered graph's decode step has static shapes (B sequences, one token each) and
reads its cache from preallocated buffers, so it can be captured once per batch of
buffers and replayed. The token ids, positions and lengths are copied into the
captured step's own input tensors before each replay; the logits come out of its
own output tensor. Host-side shape arithmetic runs once, at capture (its values
are fixed for fixed shapes); host constants the step moves to the GPU are copied
from pinned memory, which a capture may record.
"""

from __future__ import annotations

from typing import Callable

import torch

_MAX_GRAPHS = 8  # captured steps kept (one per batch of cache buffers: a generation, a repeat_cache)


class GraphedSteps:
    """``run(feeds)`` through a CUDA graph per (input shapes, cache buffers); eager for the first call of each."""

    def __init__(self, run: Callable[[dict], list], dynamic: tuple[str, ...]):
        self._run, self._dynamic = run, dynamic  # dynamic: the feeds copied in per step (ids, positions, lengths)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, list]] = {}

    def _key(self, feeds: dict) -> tuple:
        return tuple((name, tuple(t.shape), t.data_ptr() if name not in self._dynamic else 0)
                     for name, t in feeds.items())

    def __call__(self, feeds: dict) -> list:
        key = self._key(feeds)
        if key not in self._graphs:
            outputs = self._run(feeds)  # eager: also compiles and autotunes the kernels outside the capture
            self._capture(key, feeds)
            return outputs
        graph, static, outputs = self._graphs[key]
        for name in self._dynamic:
            static[name].copy_(feeds[name])
        graph.replay()
        return outputs

    def _capture(self, key: tuple, feeds: dict) -> None:
        if len(self._graphs) >= _MAX_GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        static = {name: (t.clone() if name in self._dynamic else t) for name, t in feeds.items()}
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self._run(static)
        self._graphs[key] = (graph, static, outputs)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; while a CUDA graph is being captured, through pinned memory (capturable)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
