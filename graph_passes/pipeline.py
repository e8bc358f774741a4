"""The one ordered list of graph passes ``planforge optimize`` runs, and the pipeline that runs them.

Order matters and is fixed here:

1. contextual sparsity: its decode branch gathers float weight slices, so it runs on the float graph;
2. linear quantization: rewrites every ``MatMul(x, W)`` left (K/V projections, the dense branches);
3. embedding quantization: the token table and a tied LM head;
4. streaming attention: the sink + rolling-window KV cache;
5. the backend lowerings, last: they map the portable result onto one backend's kernels
   (``lower_onnxruntime`` for ``--target onnxruntime``, ``lower_plugins`` onto planforge's plugin
   ops for ``build --target torch`` and ``tensorrt``, then ``prepare_tensorrt`` for TensorRT's
   parser; ``--target portable`` skips them).

Each pass builds itself from the options (``from_options``, which checks its own
preconditions), so the pipeline only walks this list.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from planforge.graph_passes.base import GraphPass, PassContext, PassReport
from planforge.graph_passes.contextual_sparsity import ContextualSparsityPass
from planforge.graph_passes.lower_onnxruntime import LowerOnnxRuntimePass
from planforge.graph_passes.lower_plugins import LowerPluginsPass
from planforge.graph_passes.quantize_embedding import QuantizeEmbeddingPass
from planforge.graph_passes.quantize_linears import QuantizeLinearsPass
from planforge.graph_passes.streaming_attention import StreamingAttentionPass
from planforge.graph_passes.tensorrt_prep import PrepareTensorRTPass

log = logging.getLogger(__name__)

PASSES: list[type[GraphPass]] = [
    ContextualSparsityPass,
    QuantizeLinearsPass,
    QuantizeEmbeddingPass,
    StreamingAttentionPass,
    LowerOnnxRuntimePass,
    LowerPluginsPass,
    PrepareTensorRTPass,
]


def build_passes(options, context: PassContext) -> list[GraphPass]:
    """The passes ``options`` ask for, in ``PASSES`` order; every precondition is checked before any is prepared."""
    passes = [graph_pass for cls in PASSES if (graph_pass := cls.from_options(options, context)) is not None]
    for graph_pass in passes:
        graph_pass.prepare(context)
    return passes


class Pipeline:
    """Runs its passes in the listed order on one model and reports what each matched."""

    def __init__(self, passes: list[GraphPass]):
        self.passes = list(passes)

    def __call__(self, model: ir.Model) -> list[PassReport]:
        reports = []
        for graph_pass in self.passes:
            graph_pass(model)
            report = graph_pass.report()
            if graph_pass.expected and report.matches == 0:
                why = "; ".join(sorted(set(report.refusals))[:3]) or "no candidate node in the graph"
                log.warning("graph pass %s matched nothing: %s", report.name, why)
            reports.append(report)
        return reports
