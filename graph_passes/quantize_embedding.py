"""``Gather(E, input_ids)`` on a float table -> the table stored as INT4 or INT8, dequantized in the graph.

The token-embedding table after the rewrite (V tokens, H hidden; the Cast is absent for an
fp32 model)::

    E_q [V,H] INT4 ─► DequantizeLinear(s [V,ceil(H/g)], axis=1, block g) ─► Cast ─► Ê [V,H] ─┬─► Gather(·, input_ids)
                                                                                               └─► Transpose ─► MatMul
                                                                                                   (tied LM head)

The table is quantized as what it is for a tied LM head, the weight ``E^T`` [K = H, N = V]
of ``logits = h @ E^T``: symmetric, one scale per block of ``g`` hidden units of a row,
with the same clip search as the linears (``quantizer.rtn``). Every user of the table
reads Ê, so a tied LM head stays tied: one INT4 copy serves the lookup and the logits.

Why a whole-table ``DequantizeLinear`` and not a ``Gather`` of INT4 rows: ONNX Runtime
(1.32) has no INT4 ``Gather`` kernel. A tied LM head reads every row anyway; an untied
model would pay one dequantization of the whole table per step for a lookup of a few rows,
so ``--embedding auto`` quantizes only tied tables (an explicit int4/int8 does both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx_ir as ir

from planforge import constants
from planforge.graph_passes import quantizer
from planforge.graph_passes.base import GraphPass, PassContext
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.quantize_linears import FLOAT_TYPES, INT_TYPES, require_float_source
from planforge.graph_passes.schemes import QuantizationError

EMBEDDING_FORMATS = ("float", "int8", "int4")
# Hidden units per scale: 64 for INT4 (0.26 MB of fp32 scales on the reference model's 2.1 MB table),
# one scale per row for INT8.
EMBEDDING_GROUPS = {"int4": 64, "int8": None}
ROWS_PER_CHUNK = 4096  # rows quantized at once: the clip search's float64 error array stays ~0.1 GB at H = 4096


@dataclass(frozen=True)
class EmbeddingOptions:
    storage: str = "int4"  # int4 | int8
    clip_search: bool = True

    @property
    def bits(self) -> int:
        return {"int4": 4, "int8": 8}[self.storage]

    @property
    def group(self) -> Optional[int]:
        return EMBEDDING_GROUPS[self.storage]

    def settings(self) -> dict:
        return {"storage": self.storage, "bits": self.bits, "group": self.group, "clip_search": self.clip_search}


def validate_embedding(storage: str) -> None:
    if storage not in EMBEDDING_FORMATS:
        raise QuantizationError(f"unknown embedding storage {storage!r}; choose one of {', '.join(EMBEDDING_FORMATS)}.")


def quantize_table(table: np.ndarray, options: EmbeddingOptions) -> tuple[np.ndarray, np.ndarray]:
    """float table [V, H] -> (q int8 [V, H] in the signed ``bits`` range, scale float32 [V, ceil(H/g)]).

    Rows have their own scales, so quantizing in chunks of rows gives the same result with bounded memory.
    """
    parts = [quantizer.rtn(np.asarray(table[start:start + ROWS_PER_CHUNK], np.float32).T, options.bits,
                           options.group, options.clip_search) for start in range(0, len(table), ROWS_PER_CHUNK)]
    return (np.ascontiguousarray(np.concatenate([q.T for q, _ in parts])),
            np.ascontiguousarray(np.concatenate([scale.T for _, scale in parts])))


def dequantized_table(q: np.ndarray, scale: np.ndarray, group: Optional[int]) -> np.ndarray:
    """The table Ê [V, H] float32 that the graph computes from (q, scale)."""
    return q.astype(np.float32) * quantizer.expand_rows(scale.T, q.shape[1], group).T


def _token_lookup(node: ir.Node) -> bool:
    return (node.op_type == "Gather" and node.domain == "" and len(node.inputs) == 2
            and node.inputs[1] is not None and node.inputs[1].name == constants.INPUT_IDS)


def token_table_is_tied(graph: ir.Graph) -> bool:
    """Whether the table the ``input_ids`` lookup reads has another reader (a tied LM head)."""
    tables = [node.inputs[0] for node in graph if _token_lookup(node) and node.inputs[0] is not None]
    return any(len(table.uses()) > 1 for table in tables)


class QuantizeEmbeddingPass(GraphPass):
    """Rewrites the float table of the ``Gather`` that reads ``input_ids`` (see module doc)."""

    name = "quantize_embedding"

    def __init__(self, options: EmbeddingOptions, on_done: Callable[[], None] = lambda: None):
        super().__init__()
        self.options, self.on_done = options, on_done

    @classmethod
    def from_options(cls, options, context: PassContext) -> Optional["QuantizeEmbeddingPass"]:
        storage = options.embedding_storage(tied=token_table_is_tied(context.model.graph))
        if storage == "float":
            return None
        require_float_source(context)
        clip_search = options.quant.clip_search if options.quant is not None else True
        task = context.progress.add_task(f"quantize embedding ({storage})", total=1)
        return cls(EmbeddingOptions(storage, clip_search), on_done=lambda: context.progress.advance(task))

    def settings(self) -> dict:
        return self.options.settings()

    def _table(self, graph: ir.Graph, node: ir.Node) -> Optional[ir.Value]:
        if not _token_lookup(node):
            return None  # learned position tables (GPT-2) and the passes' own index Gathers stay as they are
        table = node.inputs[0]
        if table is None or table.const_value is None or table.name not in graph.initializers:
            self.refuse(f"{node.name}: the token table is computed, not stored (already quantized?)")
            return None
        if table.const_value.dtype not in FLOAT_TYPES:
            self.refuse(f"{node.name}: the token table is {table.const_value.dtype}, already quantized")
            return None
        return table

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        if self.matches == 0:  # nothing is written: optimize() runs every pass before its output exists
            why = "; ".join(self.refusals) or "no Gather of input_ids from a float table"
            raise QuantizationError(f"no token-embedding table to quantize ({why}); use --embedding float.")
        return result

    def rewrite_graph(self, graph: ir.Graph) -> int:
        count = 0
        for node in list(graph):
            table = self._table(graph, node)
            if table is not None:
                self.rewrite(graph, table)
                self.on_done()
                count += 1
        return count

    def rewrite(self, graph: ir.Graph, table: ir.Value) -> None:
        dtype = table.const_value.dtype
        q, scale = quantize_table(table.const_value.numpy(), self.options)
        b = NodeBuilder(graph, f"{table.name}/quant")
        q_init = b.const("weight_q", q.astype(INT_TYPES[self.options.bits]))
        dq = b.op("DequantizeLinear", [q_init, b.const("weight_scale", scale)], "DequantizeLinear",
                  axis=1, block_size=self.options.group or q.shape[1])
        if dtype != ir.DataType.FLOAT:
            dq = b.op("Cast", [dq], "Cast", to=dtype)
        graph.insert_before(graph[0], b.tape.nodes)  # reads initializers only, so it may come first
        table.replace_all_uses_with(dq)
        graph.initializers.pop(table.name)

