"""The QUIK rule of the plugin lowering: a W4A4 / W8A8 QDQ linear -> ``QuikQuantize`` + ``QuikMatMul``.

::

    x ─► Gather(keep) ─► [Cast] ─► activation QDQ ─► MatMul(·, Ŵ) ─► [Cast] ─► Add ◄─ x[outliers] @ W_out
 => x ─► Reshape (M, K) ─► QuikQuantize(perm = keep ++ outliers) ─► QuikMatMul(packed W_q, s_w, Σ W_q, W_outᵀ)
      ─► Reshape (..., N) [─► Split: siblings]

The sites are the ones ``ort_sites.match_linear`` finds for the ONNX Runtime
lowering (one matcher, two targets). Both ops follow ``plugins/w4a4_gemm/reference.py``,
whose activation codes are the portable quantizer's formula, so the integers are the
same. Linears that read one input through one quantizer (q/k/v, gate/up) share one
``QuikQuantize`` and one ``QuikMatMul`` over their stacked weights, then a ``Split``.
Weight-only linears (W4A16) are not QUIK sites: their ``DequantizeLinear`` + ``MatMul``
is the standard form TensorRT builds INT4 weights from, and stays.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import onnx_ir as ir

from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.ort_sites import LinearSite, match_linear


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes (N, K) -> int8 (N, K·bits/8), two 4-bit codes per byte, low nibble first (reference.pack)."""
    if bits == 8:
        return codes.astype(np.int8)
    q = codes.astype(np.int16)
    return ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).astype(np.uint8).view(np.int8)


class QuikLinearRule:
    """pattern: ``match_linear`` on a weight's DequantizeLinear; check: the QUIK ops' constraints; rewrite."""

    def check(self, dq: ir.Node) -> Union[None, str, LinearSite]:
        site = match_linear(dq)
        if site is None or isinstance(site, str) or site.a_bits is None:
            return site if isinstance(site, str) else None  # not a linear, or weight-only: nothing to lower
        kq = site.weight.shape[1]
        if site.a_bits != site.w_bits:
            return f"{site.name}: W{site.w_bits}A{site.a_bits}; QuikMatMul takes one bit width for both"
        if site.block != kq:
            return f"{site.name}: weight scales per block of {site.block}; QuikMatMul takes one scale per channel"
        if site.w_bits == 4 and kq % 2:
            return f"{site.name}: {kq} quantized columns; 4-bit packing needs an even number"
        return site

    def rewrite(self, graph: ir.Graph, group: list[LinearSite], anchor: ir.Node, plugin) -> None:
        """Rewrites sibling sites (one input, one quantizer) before ``anchor``; ``plugin`` makes planforge nodes."""
        first = group[0]
        b = NodeBuilder(graph, f"{first.name}/planforge" + (f"+{len(group) - 1}" if len(group) > 1 else ""))
        k = first.in_features
        outliers = np.array([], np.int64) if first.outliers is None else first.outliers
        keep = np.arange(k) if first.keep is None else first.keep
        perm = np.concatenate([keep, outliers]).astype(np.int32)
        rows = b.op("Reshape", [first.root, b.const("rows", np.array([-1, k], np.int64))], "x/Reshape")  # (M, K)
        x_q, x_scale, x_zero, x_out = plugin(b, "QuikQuantize", [rows, b.const("perm", perm)], "QuikQuantize",
                                             n_outliers=len(outliers), bits=first.a_bits)
        lead = b.op("Shape", [first.root], "x/lead_dims", start=0, end=-1)
        np_dtype = ir.DataType(first.dtype).numpy()
        # Siblings stack along N into one GEMM and split after it: one launch instead of three (q/k/v) or two
        # (gate/up), and k/v's narrow N no longer leaves most SMs idle at decode. Every output column's sum
        # and epilogue read only its own weight row, so the stacked GEMM gives each sibling its own numbers.
        w_outs = [np.zeros((site.out_features, 0), np_dtype) if site.w_out is None else site.w_out.T
                  for site in group]
        codes = np.concatenate([site.weight for site in group])
        weights = [b.const("w_q", pack_codes(codes, first.w_bits)),
                   b.const("w_scale", np.concatenate([site.scale[:, 0] for site in group]).astype(np.float32)),
                   b.const("w_sum", codes.astype(np.float64).sum(axis=1).astype(np.float32)),
                   b.const("w_out", np.concatenate(w_outs).astype(np_dtype))]
        y = plugin(b, "QuikMatMul", [x_q, x_scale, x_zero, x_out, *weights], "QuikMatMul", bits=first.w_bits)
        n = sum(site.out_features for site in group)
        shape = b.op("Concat", [lead, b.const("n", np.array([n], np.int64))], "y/shape", axis=0)
        outputs = [b.op("Reshape", [y, shape], "y")]  # (..., N)
        if len(group) > 1:
            sizes = b.const("split", np.array([site.out_features for site in group], np.int64))
            outputs = b.op("Split", [outputs[0], sizes], "Split", num_outputs=len(group), axis=-1)
        for site, out in zip(group, outputs):
            out.type, out.shape = site.y.type, site.y.shape
            site.y.replace_all_uses_with(out, replace_graph_outputs=True)
        graph.insert_before(anchor, b.nodes)
        graph.remove([node for site in group for node in site.nodes], safe=True)
