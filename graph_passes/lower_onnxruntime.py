"""Portable QDQ graph -> ONNX Runtime's own CPU kernels (``optimize --target onnxruntime``).

The rewrites, on the sites ``ort_sites`` finds (every other node stays as it is)::

    weight-only linear (W4A16)
        x ─► [Cast f32] ─► MatMul(·, Transpose(DQ(W int4, s, block g))) ─► [Cast]
     => x ─► [Cast f32] ─► MatMulNBits(bits 4, block g, accuracy_level 4) ─► [Cast]

    W4A4 / W8A8 linear (QUIK, outliers in float)
        x ─► Gather(keep) ─► [Cast f32] ─► activation QDQ ─► MatMul(·, Ŵ) ─► [Cast] ─► Add ◄─ x[outliers] @ W_out
     => x ─► Gather(keep) ─► [Cast f32] ─► the same quantizer up to its codes q ─► Cast uint8
             ─► MatMulInteger(q, W_q) = Σ q·W_q, exact int32
             ─► ·s_tok·s_w + lo_tok·colsum(Ŵ) ─► [Cast] ─► Add ◄─ x[outliers] @ W_out

    token table (INT4 / INT8, tied LM head)
        DQ(E) ─► Gather(·, input_ids)        DQ(E) ─► Transpose ─► MatMul (head)
     => GatherBlockQuantized(E, input_ids)  MatMulNBits(h, E)           one packed copy of E for both

Linears that read the same input with the same format and columns (q/k/v, gate/up)
are rewritten as one: one quantizer, one GEMM, then ``Split``.

Why these kernels (measured on the 2-core CI machine, `samples/bench_peers.py`, docs/results.md):
``MatMulInteger`` with uint8 codes and int8 4-bit weights runs MLAS's u8s8 GEMM, the fastest exact integer path here (the codes are 0..15 and the
weights -8..7, so the AVX2 16-bit pair sums cannot saturate; s8s8 is 10x slower, and ``MatMulNBits``
with int8 compute is exact only with a sentinel column per block and is slower for prefill); 8-bit
layers use uint8 x uint8 (weights + 128), because u8s8 pair sums of 8-bit values saturate on AVX2
without VNNI. (``MatMulIntegerToFloat``, which folds the channel scale in, measured no faster.) The 4-bit weights stay INT4 in the file and are widened to
int8 by a ``Cast`` that ONNX Runtime folds at session start. ``MatMulNBits`` with
``accuracy_level=4`` (per-block int8 activations) is what ONNX Runtime GenAI ships for int4.
"""

from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from planforge import constants
from planforge.graph_passes import ort_attention
from planforge.graph_passes.base import GraphPass, PassContext, all_graphs
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.options import ACCURACY_LEVELS
from planforge.graph_passes.ort_fusions import fuse_residual_norms
from planforge.graph_passes.ort_sites import LinearSite, TableSite, match_linear, match_table
from planforge.graph_passes.quantize_linears import activation_range, rounded_offsets
from planforge.graph_passes.schemes import QuantizationError
from planforge.manifest import Manifest

MS_DOMAIN = "com.microsoft"
MIN_ONNXRUNTIME = "1.22"  # MatMulNBits accuracy_level 4 and GatherBlockQuantized with bits on the CPU provider
NBITS_BLOCKS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # block sizes MatMulNBits takes (powers of two >= 16)


def pack_nbits(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed codes (N, K) -> MatMulNBits' B (N, ceil(K/block), block·bits/8) uint8, unsigned (code + 2^(bits-1)),
    two 4-bit codes per byte low nibble first; the zero point is the default 2^(bits-1)."""
    n, k = codes.shape
    blocks = -(-k // block)
    offset = 1 << (bits - 1)
    padded = np.full((n, blocks * block), offset, dtype=np.uint8)
    padded[:, :k] = (codes.astype(np.int16) + offset).astype(np.uint8)
    if bits == 4:
        padded = padded[:, 0::2] | (padded[:, 1::2] << 4)
    return np.ascontiguousarray(padded.reshape(n, blocks, -1))


class LowerOnnxRuntimePass(GraphPass):
    """Lowers the quantized linears and the quantized token table onto ONNX Runtime kernels (module doc)."""

    name = "lower_onnxruntime"
    expected = False  # a float model has nothing to lower; that is not a warning

    def __init__(self, accuracy_level: int = 4, attention_refusal: Optional[str] = None, head_dim: int = 0,
                 sliding_windows: tuple = ()):
        super().__init__()
        self.accuracy_level = accuracy_level
        self.ops: set[str] = set()
        self.fused: list[list[str]] = []
        self.fused_norms = 0
        # GroupQueryAttention needs the model-level contract of ort_attention; None: try every layer
        self.attention_refusal, self.head_dim, self.sliding_windows = attention_refusal, head_dim, sliding_windows
        self.attention_layers = 0

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["LowerOnnxRuntimePass"]:
        if options.target != "onnxruntime":
            return None
        if options.accuracy_level not in ACCURACY_LEVELS:
            raise QuantizationError(f"--accuracy-level {options.accuracy_level} is not one of "
                                    f"{', '.join(map(str, ACCURACY_LEVELS))} (4: int8 activations, 1: float32).")
        manifest = context.manifest
        refusal = ort_attention.why_not_lowerable(manifest, streaming=options.streaming is not None)
        return cls(options.accuracy_level, refusal, manifest.dims.head_dim, tuple(manifest.sliding_windows))

    def settings(self) -> dict:
        return {"accuracy_level": self.accuracy_level, "fused": self.fused, "residual_norms": self.fused_norms,
                "group_query_attention": self.attention_layers,
                "onnxruntime": {"min_version": MIN_ONNXRUNTIME, "ops": sorted(self.ops)}}

    def record(self, manifest: Manifest) -> None:
        if self.matches == 0:
            return  # nothing lowered: model.onnx is still the portable graph
        super().record(manifest)
        manifest.target = "onnxruntime"
        if self.attention_layers:
            ort_attention.record_contract(manifest)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        attention = self._lower_attention(model)
        self.matches += attention
        result = ir.passes.PassResult(model, modified=result.modified or attention > 0)
        if self.matches:
            model.opset_imports[MS_DOMAIN] = 1
            ir.passes.common.RemoveUnusedNodesPass()(model)  # the portable weights the rewrite replaced
        return result

    # ------------------------------------------------------------------------------------- attention
    def _lower_attention(self, model: ir.Model) -> int:
        """Every layer's Attention onto GroupQueryAttention, or none: the cache contract is the whole model's."""
        graph = model.graph
        nested = [node for sub in list(all_graphs(model))[1:] for node in sub
                  if node.op_type == "Attention" and node.domain == ""]
        nodes = [node for node in graph if node.op_type == "Attention" and node.domain == ""]
        if not nodes:
            return 0
        why = self.attention_refusal
        if why is None and nested:
            why = "attention inside the contextual-sparsity branches keeps Attention"
        mask = next((v for v in graph.inputs if v.name == constants.ATTENTION_MASK), None)
        if why is None and mask is None:
            why = "the graph has no attention_mask input"
        windows = self.sliding_windows or (None,) * len(nodes)
        if why is None and len(nodes) != len(windows):
            why = f"{len(nodes)} Attention nodes for {len(windows)} layers' windows"
        # graph order is layer order (each layer reads the previous one's output)
        sites = [] if why else [ort_attention.match(node, graph, self.head_dim, window)
                                for node, window in zip(nodes, windows)]
        refused = [site for site in sites if isinstance(site, str)]
        if why or refused:
            self.refuse(f"attention stays Attention: {why or refused[0]}")
            return 0
        seqlens, total = ort_attention.sequence_lengths(graph, mask)
        for site in sites:
            ort_attention.rewrite(graph, site, seqlens, total)
        ort_attention.share_buffers(graph)
        self.ops.add("GroupQueryAttention")
        self.attention_layers = len(sites)
        return len(sites)

    # --------------------------------------------------------------------------------------- sites
    def rewrite_graph(self, graph: ir.Graph) -> int:
        linears, tables = [], []
        for node in graph:
            if node.op_type != "DequantizeLinear" or node.domain != "":
                continue
            site = match_linear(node)
            if site is None:
                site = match_table(node)
            if isinstance(site, str):
                self.refuse(site)
            elif isinstance(site, LinearSite):
                linears.append(site)
            elif isinstance(site, TableSite):
                tables.append(site)
        groups: dict[tuple, list[LinearSite]] = {}
        for site in linears:
            groups.setdefault(site.group_key(), []).append(site)
        position = {node: i for i, node in enumerate(graph)}
        count = 0
        for group in groups.values():
            anchor = min((node for site in group for node in site.nodes), key=position.__getitem__)
            count += self._rewrite_linears(graph, group, anchor)
        for table in tables:
            count += self._rewrite_table(graph, table)
        norms = fuse_residual_norms(graph)
        if norms:
            self.ops.add("SkipSimplifiedLayerNormalization")
            self.fused_norms += norms
        if count or norms:
            graph.sort()
        return count + norms

    def _refuse_nbits(self, site_name: str, block: int, k: int) -> bool:
        if block in NBITS_BLOCKS or block == k and k in NBITS_BLOCKS:
            return False
        self.refuse(f"{site_name}: weight blocks of {block} rows; MatMulNBits takes powers of two from 16 "
                    "(stays portable)")
        return True

    # ------------------------------------------------------------------------------------- linears
    def _rewrite_linears(self, graph: ir.Graph, group: list[LinearSite], anchor: ir.Node) -> int:
        """Rewrites sibling linears as one; the new nodes go before ``anchor``, the group's first node."""
        first = group[0]
        if first.a_bits is None and self._refuse_nbits(first.name, first.block, first.weight.shape[1]):
            return 0
        b = NodeBuilder(graph, f"{first.name}/ort" if len(group) == 1 else f"{first.name}+{len(group) - 1}/ort")
        dtype, x = first.dtype, first.root
        if dtype != ir.DataType.FLOAT:
            x = b.op("Cast", [x], "in/Cast", to=ir.DataType.FLOAT)
        weight = np.concatenate([site.weight for site in group])  # (N, Kq): siblings stack along N
        scale = np.concatenate([site.scale for site in group])
        zero_term = None  # W4A4/W8A8: (lo (..., 1), colsum(Ŵ) (N,)), the codes' offset through the weights
        if first.a_bits is None:
            y = self._matmul_nbits(b, x, weight, scale, first.block, first.w_bits)
        else:
            y, zero_term = self._integer_linear(b, x, weight, scale, first.w_bits, first.a_bits, first.keep,
                                                first.in_features)
        fold = zero_term is not None and first.outliers is not None and dtype == ir.DataType.FLOAT
        if zero_term is not None and not fold:
            lo, colsum = zero_term
            y = b.op("Add", [y, b.op("Mul", [lo, b.const("colsum", colsum)], "lo/colsum")], "lo/Add")
        if dtype != ir.DataType.FLOAT:
            y = b.op("Cast", [y], "out/Cast", to=dtype)
        if first.outliers is not None:
            xo = b.op("Gather", [first.root, b.const("outlier_index", first.outliers.astype(np.int64))],
                      "outliers/Gather", axis=-1)
            w_out = np.concatenate([site.w_out for site in group], axis=1)
            if fold:  # lo·colsum as one more row of the float outlier GEMM: [x_out, lo] @ [W_out; colsum]
                lo, colsum = zero_term
                xo = b.op("Concat", [xo, lo], "outliers/Concat", axis=-1)
                w_out = np.concatenate([w_out, colsum[None, :].astype(w_out.dtype)])
            y = b.op("Add", [y, b.op("MatMul", [xo, b.const("weight_outliers", w_out)], "outliers/MatMul")], "Add")
        outputs = [y]
        if len(group) > 1:
            sizes = b.const("split", np.array([site.out_features for site in group], dtype=np.int64))
            outputs = b.op("Split", [y, sizes], "Split", num_outputs=len(group), axis=-1)
            self.fused.append([site.name for site in group])
        graph.insert_before(anchor, b.nodes)
        for site, out in zip(group, outputs):
            out.type, out.shape = site.y.type, site.y.shape
            site.y.replace_all_uses_with(out, replace_graph_outputs=True)
        graph.remove([node for site in group for node in site.nodes], safe=True)
        return len(group)

    def _matmul_nbits(self, b: NodeBuilder, x: ir.Value, codes: np.ndarray, scale: np.ndarray, block: int,
                      bits: int) -> ir.Value:
        n, k = codes.shape
        self.ops.add("MatMulNBits")
        return b.op("MatMulNBits", [x, b.const("weight_nbits", pack_nbits(codes, bits, block)),
                                    b.const("weight_scale", np.ascontiguousarray(scale.reshape(-1)))],
                    "MatMulNBits", _domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block,
                    accuracy_level=self.accuracy_level)

    def _integer_linear(self, b: NodeBuilder, x: ir.Value, codes: np.ndarray, scale: np.ndarray, w_bits: int,
                        a_bits: int, keep: Optional[np.ndarray], width: int) -> tuple[ir.Value, tuple]:
        """x (..., width) float32 -> (s_tok·(Σ_k q·W_q)·s_w (..., N) float32, (lo, colsum(Ŵ))): x̂ @ Ŵ through an
        exact integer GEMM (module doc) but its zero term lo·colsum, which the caller adds (alone, or as a row
        of the outlier GEMM).

        With x̂ = q·s_tok + lo (the portable ``(q - mid)·s + (lo + mid·s)``) and Ŵ = W_q·s_w:
        x̂ @ Ŵ = s_tok · (Σ_k q·W_q)·s_w + lo · colsum(Ŵ), so the GEMM needs no zero point for the codes.
        The kept columns are not gathered (a strided copy of every token, the slowest op of W4A4 prefill):
        the token's range skips the outlier columns through a mask, every column gets a code, and the
        outlier columns' weight rows are zero, so the integer sum is the kept columns' exactly.
        """
        low = high = x
        if keep is not None:
            full = np.zeros((codes.shape[0], width), dtype=np.int8)
            full[:, keep] = codes
            codes = full  # (N, width)
            # x + 0 is x and x ± inf is ±inf, so these sums hold the kept columns as they are and push the
            # outlier columns out of the min and the max: two Adds, a third of two Wheres' time.
            outside = np.full(width, np.inf, dtype=np.float32)
            outside[keep] = 0.0
            low = b.op("Add", [x, b.const("outside_above", outside)], "act/kept_low")
            high = b.op("Add", [x, b.const("outside_below", -outside)], "act/kept_high")
        scale_tok, lo = activation_range(b, low, high, a_bits)
        levels = b.const("levels_clip", np.array(float((1 << a_bits) - 1), dtype=np.float32))
        # Cast truncates toward zero, which on the kept columns' non-negative (x - lo) / s + ½ is the
        # portable graph's Floor (Clip first: the same integers, one op fewer).
        clipped = b.op("Clip", [rounded_offsets(b, x, scale_tok, lo), b.const("zero_clip", np.array(0.0, np.float32)),
                                levels], "act/Clip")
        codes_u8 = b.op("Cast", [clipped], "act/codes", to=ir.DataType.UINT8)
        if w_bits == 4:  # u8 x s8: INT4 in the file, widened to int8 by a Cast ONNX Runtime folds at load
            w4 = b.const("weight_q", np.ascontiguousarray(codes).astype(ml_dtypes.int4))
            w = b.op("Transpose", [b.op("Cast", [w4], "weight/Cast", to=ir.DataType.INT8)], "weight/Transpose",
                     perm=[1, 0])
            acc = b.op("MatMulInteger", [codes_u8, w], "MatMulInteger")
        else:  # u8 x u8: (W + 128) with zero point 128, exact where u8 x s8 pair sums saturate
            w = b.const("weight_u8", np.ascontiguousarray((codes.T.astype(np.int16) + 128).astype(np.uint8)))
            acc = b.op("MatMulInteger", [codes_u8, w, b.const("codes_zero", np.array(0, np.uint8)),
                                         b.const("weight_zero", np.array(128, np.uint8))], "MatMulInteger")
        self.ops.add("MatMulInteger")
        channel_scale = np.ascontiguousarray(scale[:, 0])  # per output channel: one block of Kq
        colsum = (codes.astype(np.float64).sum(axis=1) * channel_scale).astype(np.float32)  # (N,) Σ_k Ŵ[k, n]
        acc_f = b.op("Cast", [acc], "acc/Cast", to=ir.DataType.FLOAT)  # (..., N) Σ_k q·W_q
        y = b.op("Mul", [b.op("Mul", [acc_f, scale_tok], "acc/token_scale"), b.const("channel_scale", channel_scale)],
                 "acc/channel_scale")
        return y, (lo, colsum)

    # --------------------------------------------------------------------------------- token table
    def _rewrite_table(self, graph: ir.Graph, table: TableSite) -> int:
        vocab, hidden = table.weight.shape
        if self._refuse_nbits("the token table", table.block, hidden):
            return 0
        if hidden % table.block:
            self.refuse(f"the token table: hidden size {hidden} is not a multiple of its {table.block}-unit blocks "
                        "(stays portable)")
            return 0
        b = NodeBuilder(graph, "embedding/ort")
        packed = b.const("weight_nbits", pack_nbits(table.weight, table.bits, table.block))  # (V, H/g, g·bits/8)
        scale = np.ascontiguousarray(table.scale)
        rows = b.op("Reshape", [packed, b.const("rows", np.array([vocab, -1], dtype=np.int64))], "rows")
        replacements = []
        for lookup in table.lookups:
            y = b.op("GatherBlockQuantized", [rows, lookup.inputs[1], b.const("scale", scale)], "GatherBlockQuantized",
                     _domain=MS_DOMAIN, bits=table.bits, block_size=table.block, gather_axis=0, quantize_axis=1)
            replacements.append((lookup.outputs[0], self._to_dtype(b, y, table.dtype)))
        for transpose, matmul in table.heads:
            h = matmul.inputs[0]
            if table.dtype != ir.DataType.FLOAT:
                h = b.op("Cast", [h], "head/in_Cast", to=ir.DataType.FLOAT)
            y = b.op("MatMulNBits", [h, packed, b.const("scale_flat", scale.reshape(-1))], "head/MatMulNBits",
                     _domain=MS_DOMAIN, K=hidden, N=vocab, bits=table.bits, block_size=table.block,
                     accuracy_level=self.accuracy_level)
            replacements.append((matmul.outputs[0], self._to_dtype(b, y, table.dtype)))
        self.ops.update({"GatherBlockQuantized"} | ({"MatMulNBits"} if table.heads else set()))
        graph.insert_before(graph[0], b.nodes)
        for old, new in replacements:
            new.type, new.shape = old.type, old.shape
            old.replace_all_uses_with(new, replace_graph_outputs=True)
        removed = list(table.lookups) + [n for pair in table.heads for n in pair]
        removed += [table.dq] + ([table.cast] if table.cast is not None else [])
        graph.remove(removed, safe=True)
        return 1

    @staticmethod
    def _to_dtype(b: NodeBuilder, y: ir.Value, dtype: ir.DataType) -> ir.Value:
        return y if dtype == ir.DataType.FLOAT else b.op("Cast", [y], "out/Cast", to=dtype)

