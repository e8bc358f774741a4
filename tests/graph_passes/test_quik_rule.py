"""The QUIK rule of the plugin lowering, one linear at a time against the portable QDQ graph on ONNX Runtime.

Given the same input, the lowered linear's integer codes are the portable quantizer's exactly, and its output
agrees to float rounding (the reference epilogue runs in float64, the portable MatMul in float32). Whole-model
logits are not compared at this tolerance: a 4-bit code that flips where the two engines' float inputs differ
in the last bit changes every later layer (ONNX Runtime alone differs by ~1 between 1 and 2 threads).
"""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as h

from planforge.graph_passes.plugin_nodes import plugin
from planforge.graph_passes.quik_rule import QuikLinearRule, pack_codes
from planforge.graph_passes.schemes import QuantOptions
from planforge.plugins.w4a4_gemm.reference import pack, unpack
from planforge.runtime.torch_graph.graph import TorchGraph

from .helpers import quantized_linear_model as quantized_linear

K, N = 96, 40


def lower(model: ir.Model) -> ir.Model:
    lowered = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    graph = lowered.graph
    (site,) = [s for n in graph if n.op_type == "DequantizeLinear" and (s := QuikLinearRule().check(n))]
    order = list(graph)
    QuikLinearRule().rewrite(graph, [site], min(site.nodes, key=order.index), plugin)
    graph.sort()
    lowered.opset_imports["planforge"] = 2
    return lowered


def test_pack_codes_matches_the_reference_packing():
    codes = np.random.default_rng(0).integers(-8, 8, (5, 12)).astype(np.int8)
    assert np.array_equal(pack_codes(codes, 4), pack(torch.from_numpy(codes), 4).numpy())
    assert np.array_equal(pack_codes(codes, 8), codes)


@pytest.mark.parametrize("scheme, role, outliers, dtype", [
    ("w4a4", "q_proj", "8", TensorProto.FLOAT),
    ("w4a4", "q_proj", "0", TensorProto.FLOAT),
    ("w4a4", "down_proj", "0", TensorProto.FLOAT),  # QUIK's INT8 down_proj inside w4a4
    ("w8a8", "q_proj", "0", TensorProto.FLOAT),
    ("w4a4", "q_proj", "8", TensorProto.FLOAT16),
])
def test_codes_are_exact_and_the_output_matches_the_qdq_graph(scheme, role, outliers, dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    portable = quantized_linear(w, QuantOptions(scheme, outliers=outliers, int8_outliers=outliers), dtype, role)
    lowered = lower(portable)
    ops = {n.op_type for n in lowered.graph}
    assert {"QuikQuantize", "QuikMatMul"} <= ops and not {"DequantizeLinear", "Floor"} & ops
    x = (rng.standard_normal((2, 5, K)) * 3).astype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
    x.reshape(-1, K)[0, :4] = [0.0, 0.0, 7.5, -7.5]  # ties and repeats in the token range

    proto = ir.serde.serialize_model(portable)
    clip = next(n.outputs[0].name for n in portable.graph if n.op_type == "Clip")
    proto.graph.output.append(h.make_empty_tensor_value_info(clip))
    y_ref, codes = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})

    lowered_proto = ir.serde.serialize_model(lowered)
    quantize = next(n for n in lowered_proto.graph.node if n.op_type == "QuikQuantize")
    lowered_proto.graph.output.append(h.make_empty_tensor_value_info(quantize.output[0]))
    bits = next(a.i for a in quantize.attribute if a.name == "bits")
    y, x_q = TorchGraph(lowered_proto).run({"x": torch.from_numpy(x)})
    mid = 1 << (bits - 1)
    np.testing.assert_array_equal(unpack(x_q, bits).numpy() + mid, codes.reshape(-1, codes.shape[-1]))
    scale = float(np.abs(y_ref.astype(np.float32)).max())
    rtol = 1e-5 if dtype == TensorProto.FLOAT else 2e-3  # fp16: both round their float32 result to fp16
    np.testing.assert_allclose(y.float().numpy(), y_ref.astype(np.float32), atol=rtol * scale, rtol=0)


def test_weight_only_linears_are_not_quik_sites():
    portable = quantized_linear(np.ones((K, N), np.float32), QuantOptions("w4a16", group=32), TensorProto.FLOAT,
                                "q_proj")
    assert all(QuikLinearRule().check(n) is None for n in portable.graph if n.op_type == "DequantizeLinear")
