"""Per-token multiply-accumulates (MACs) of one decode step, from the nodes ONNX Runtime actually executes.

One decode step (batch 1, one new token, ``context`` positions including it) runs with graph
optimizations off and profiling on; every executed node (``If`` branches included: only the branch
taken shows up) is looked up in the model, and its MACs are counted from the shapes it ran with:

- ``MatMul`` [..., M, K] x [..., K, N]: batch x M x K x N; ``Gemm``: M x K x N;
- ``Attention`` (opset 23): scores Q·K^T and probabilities·V, 2 x B x q_heads x S x T x head_dim.

Each MAC is filed under one part: ``linear`` (a MatMul with a weight: an initializer, reached directly or
through Gather (the sparse decode branch's rows), Reshape, Transpose or DequantizeLinear (a quantized
weight)), ``attention`` (the Attention op, or an activation x activation MatMul), ``predictor`` (nodes
of the contextual-sparsity predictor) and ``lm_head`` (the MatMul that produces the logits).
Elementwise ops, norms, softmax and gathers are not MACs and are not counted.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planforge import constants
from planforge.manifest import Manifest

PARTS = ("linear", "attention", "predictor", "lm_head")
PREDICTOR_SCOPE = "/sparsity/predictor/"  # the node-name scope ContextualSparsityPass gives its predictor


@dataclass
class MacCount:
    context: int
    parts: dict = field(default_factory=lambda: dict.fromkeys(PARTS, 0))

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def blocks(self) -> int:
        """The transformer blocks (and the predictor, the cost of skipping): everything but the LM head."""
        return self.total - self.parts["lm_head"]


def _index_model(model):
    """name -> (node, initializer names of its graph) for every node of every graph; and the LM head node name."""
    import onnx

    nodes = {}

    def walk(graph, outer_inits):
        inits = {t.name: tuple(t.dims) for t in graph.initializer}
        visible = {**outer_inits, **inits}
        for node in graph.node:
            nodes[node.name] = (node, inits, visible)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g, visible)
                for g in attr.graphs:
                    walk(g, visible)

    walk(model.graph, {})
    producers = {out: n for n in model.graph.node for out in n.output}
    value = constants.LOGITS
    while value in producers and producers[value].op_type in ("Cast", "Identity"):
        value = producers[value].input[0]
    lm_head = producers[value].name if value in producers else None
    return nodes, lm_head


def _shapes(node, inits: dict, profiled: list) -> list:
    """Input shapes of one executed node: ORT leaves the node's own graph's initializers out of the profile."""
    shapes = [tuple(next(iter(p.values()))) for p in profiled]
    if len(shapes) == len(node.input):
        return shapes
    merged, it = [], iter(shapes)
    for name in node.input:
        merged.append(inits[name] if name in inits else next(it, None))
    return merged


def _macs(node, shapes: list) -> int:
    if node.op_type == "MatMul":
        a, b = shapes[0], shapes[1]
        a = (1,) + a if len(a) == 1 else a
        b = b + (1,) if len(b) == 1 else b
        batch = np.broadcast_shapes(a[:-2], b[:-2])
        return int(np.prod(batch, dtype=np.int64)) * a[-2] * a[-1] * b[-1]
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        m, k = shapes[0][::-1] if trans_a else shapes[0]
        trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
        n = shapes[1][0] if trans_b else shapes[1][1]
        return m * k * n
    if node.op_type == "Attention":
        q, past = shapes[0], shapes[4] if len(shapes) > 4 and shapes[4] is not None else None
        heads = next(at.i for at in node.attribute if at.name == "q_num_heads")
        batch, seq = q[0], q[1]
        head_dim = q[2] // heads
        total = seq + (past[2] if past is not None else 0)
        return 2 * batch * heads * seq * total * head_dim
    return 0


WEIGHT_PATH_OPS = ("Gather", "Reshape", "Transpose", "DequantizeLinear", "Cast", "Identity", "Unsqueeze")


def _is_weight(value: str, visible: dict, producers: dict, depth: int = 0) -> bool:
    """An initializer, or one reached through data-movement/dequantization ops (Gather of its rows, Transpose ...)."""
    if value in visible:
        return True
    producer = producers.get(value)
    if producer is None or depth > 6 or producer.op_type not in WEIGHT_PATH_OPS:
        return False
    return _is_weight(producer.input[0], visible, producers, depth + 1)


def _part(node, name: str, visible: dict, lm_head, producers: dict) -> str:
    if name.startswith(PREDICTOR_SCOPE):
        return "predictor"
    if name == lm_head:
        return "lm_head"
    if node.op_type == "Gemm" or any(_is_weight(v, visible, producers) for v in node.input[:2]):
        return "linear"
    return "attention"


def decode_macs(model_dir: Path, context: int, token: int = 1) -> MacCount:
    """MACs of one decode step of batch 1 whose new token sits at position ``context - 1``."""
    import onnx
    import onnxruntime as ort

    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    d = manifest.dims
    if not 1 <= context <= d.max_seq_len:
        raise ValueError(f"context {context} outside 1..{d.max_seq_len}")
    model = onnx.load(str(model_dir / constants.MODEL_FILE))
    nodes, lm_head = _index_model(model)
    producers = {}

    def collect(graph):
        for n in graph.node:
            for out in n.output:
                producers[out] = n
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)

    collect(model.graph)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "macs")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model_dir / constants.MODEL_FILE), options,
                                       providers=["CPUExecutionProvider"])
        kv_dtype = np.dtype(manifest.kv_numpy_dtype)
        past = np.zeros((1, d.num_kv_heads, context - 1, d.head_dim), kv_dtype)
        feeds = {constants.INPUT_IDS: np.array([[token]], np.int64),
                 constants.ATTENTION_MASK: np.ones((1, context), np.int64),
                 constants.POSITION_IDS: np.array([[context - 1]], np.int64)}
        for i in range(d.num_layers):
            feeds[constants.past_key(i)] = feeds[constants.past_value(i)] = past
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    count = MacCount(context)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        if name not in nodes:
            continue
        node, inits, visible = nodes[name]
        macs = _macs(node, _shapes(node, inits, event["args"].get("input_type_shape", [])))
        if macs:
            count.parts[_part(node, name, visible, lm_head, producers)] += macs
    return count


def format_table(rows: list[tuple[str, MacCount]]) -> str:
    """Markdown table of per-token MACs (millions), one column per model; the last row compares to the first."""
    base = rows[0][1]
    header = "| per-token MACs (M) at context {} | ".format(base.context) + " | ".join(n for n, _ in rows) + " |"
    lines = [header, "|---|" + "---:|" * len(rows)]
    for part in PARTS:
        lines.append(f"| {part} | " + " | ".join(f"{c.parts[part] / 1e6:.2f}" for _, c in rows) + " |")
    lines.append("| transformer blocks (+ predictor) | " + " | ".join(f"{c.blocks / 1e6:.2f}" for _, c in rows) + " |")
    lines.append("| whole graph | " + " | ".join(f"{c.total / 1e6:.2f}" for _, c in rows) + " |")
    lines.append("| blocks vs first | " + " | ".join(f"{c.blocks / base.blocks:.3f}x" for _, c in rows) + " |")
    lines.append("| whole graph vs first | " + " | ".join(f"{c.total / base.total:.3f}x" for _, c in rows) + " |")
    return "\n".join(lines)
