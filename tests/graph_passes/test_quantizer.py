"""The numpy weight quantizer and the ONNX quantized linear, against independent references.

References: the W4A4 GEMM plugin's plain-torch quantizer (``plugins/w4a4_gemm/reference.py``)
for RTN weights, per-token activations and the QUIK epilogue; per-element loops in
this file for block scales and the clip search; a hand-written nibble packer for INT4.
"""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from planforge.graph_passes import quantizer
from planforge.graph_passes.gptq import gptq
from planforge.graph_passes.node_builder import NodeBuilder
from planforge.graph_passes.quantize_linears import QuantizedLinear, build_quantized_linear, quantize_linear
from planforge.graph_passes.schemes import LinearFormat
from planforge.plugins.w4a4_gemm import reference as plugin

from .helpers import run_quantized_linear


def _weights(k, n, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    w[rng.integers(0, k, 4), rng.integers(0, n, 4)] *= 20  # a few large weights for the clip search to cut
    return w


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_per_channel_bit_exact_vs_plugin_reference(bits):
    w = _weights(96, 40)
    q, scale = quantizer.rtn(w, bits, group=None, clip_search=False)
    ref = plugin.quantize_weights(torch.from_numpy(w.T.copy()), torch.arange(96), 0, bits)
    assert scale.shape == (1, 40)
    assert np.array_equal(scale[0], ref.scale.numpy())
    assert np.array_equal(q.T.astype(np.int32), plugin.unpack(ref.packed, bits).numpy())


def _loop_reference(w, bits, group, ratios):
    """Scales by explicit loops over (block, channel, ratio)."""
    qm = 2 ** (bits - 1) - 1
    k, n = w.shape
    g = group or k
    blocks = -(-k // g)
    out = np.zeros((blocks, n), np.float32)
    for b in range(blocks):
        for c in range(n):
            col = w[b * g:(b + 1) * g, c]
            base = np.float32(max(np.abs(col).max(), np.float32(1e-8))) / np.float32(qm)
            best, best_err = None, np.inf
            for r in ratios:
                s = np.float32(base * r)
                qc = np.clip(np.round(col / s), -qm - 1, qm)
                err = float((np.abs(col - qc.astype(np.float32) * s).astype(np.float64) ** 2.4).sum())
                if err < best_err:
                    best, best_err = s, err
            out[b, c] = best
    return out


@pytest.mark.parametrize("bits,group", [(4, None), (4, 128), (8, None), (4, 32)])
def test_block_scales_and_clip_search_bit_exact_vs_loops(bits, group):
    w = _weights(300, 12, seed=bits)  # 300 rows: the last block of 128 / 32 is partial
    scale = quantizer.weight_scales(w, bits, group, clip_search=True)
    assert np.array_equal(scale, _loop_reference(w, bits, group, quantizer.CLIP_RATIOS))
    assert np.array_equal(quantizer.weight_scales(w, bits, group, clip_search=False), _loop_reference(w, bits, group, [1.0]))
    clipped = (scale < quantizer.weight_scales(w, bits, group, clip_search=False)).mean()
    assert clipped > 0.1  # the search does cut the large weights' channels


def test_int4_initializer_is_packed_low_nibble_first(tmp_path):
    w = _weights(64, 10)
    ql = quantize_linear(w, LinearFormat(4, 4), None, "rtn")
    graph = ir.Graph([ir.val("x", ir.DataType.FLOAT, ir.Shape(["m", 64]))], [], nodes=[], opset_imports={"": 23})
    b = NodeBuilder(graph, "lin")
    graph.outputs.append(build_quantized_linear(b, graph.inputs[0], ql, ir.DataType.FLOAT))
    graph.extend(b.tape.nodes)
    ir.save(ir.Model(graph, ir_version=10), str(tmp_path / "m.onnx"))
    tensor = next(t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if t.name == "lin.weight_q")
    assert tensor.data_type == onnx.TensorProto.INT4
    assert list(tensor.dims) == [10, 64]  # [N, K]: packed along K, as the W4A4 GEMM plugin reads it
    flat = ql.q.T.astype(np.int32).ravel()
    expected = ((flat[0::2] & 15) | ((flat[1::2] & 15) << 4)).astype(np.uint8).tobytes()
    assert tensor.raw_data == expected and len(tensor.raw_data) == 64 * 10 // 2


@pytest.mark.parametrize("a_bits,outliers", [(4, 0), (4, 8), (8, 3)])
def test_activation_quantization_bit_exact_vs_plugin_reference(a_bits, outliers):
    rng = np.random.default_rng(1)
    k, n = 64, 24
    x = rng.standard_normal((9, k)).astype(np.float32)
    x[:, 5] *= 30  # an outlier column
    x[3] = 0.25  # a constant token: scale falls back to 1
    absmax = np.abs(x).max(0)
    stats = type("S", (), {"absmax": absmax})
    ql = quantize_linear(_weights(k, n), LinearFormat(a_bits, a_bits, None, outliers), stats, "rtn")
    y, q, scale, zero = run_quantized_linear(x, ql, ["act/q", "act/scale", "act/zero"])
    perm = torch.from_numpy(np.concatenate([ql.keep, ql.outliers]))
    ref_q, ref_scale, ref_zero, ref_out = plugin.quantize_activations(torch.from_numpy(x), perm, outliers, a_bits)
    assert np.array_equal(q.astype(np.int32), plugin.unpack(ref_q, a_bits).numpy())
    assert np.array_equal(scale[:, 0], ref_scale.numpy()) and np.array_equal(zero[:, 0], ref_zero.numpy())
    assert outliers == 0 or 5 in ql.outliers
    # the whole linear: the plugin's integer GEMM + epilogue in float64
    w_int = torch.from_numpy(ql.q.T.astype(np.int32))  # (N, Kq)
    y_ref = plugin.quik_matmul(ref_q, ref_scale, ref_zero, ref_out.double(), plugin.pack(w_int, a_bits),
                               torch.from_numpy(ql.scale[0]), w_int.sum(1).float(),
                               torch.from_numpy(ql.w_out.T.copy()).double(), a_bits).numpy()
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-6 * np.abs(y_ref).max())


@pytest.mark.parametrize("fmt", [LinearFormat(4, None, 128), LinearFormat(8, 8), LinearFormat(4, 4, None, 6)])
def test_quantized_linear_fp16_model_matches_numpy(fmt):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 200)).astype(np.float16)
    ql = quantize_linear(_weights(200, 16), fmt, type("S", (), {"absmax": np.abs(x).max(0).astype(np.float64)}), "rtn")
    (y,) = run_quantized_linear(x, ql, dtype=ir.DataType.FLOAT16)
    assert y.dtype == np.float16
    xf = x.astype(np.float32)
    xk = xf[:, ql.keep]
    if fmt.a_bits:
        perm = torch.from_numpy(np.concatenate([ql.keep, ql.outliers]))
        q, s, z, _ = plugin.quantize_activations(torch.from_numpy(xf), perm, fmt.outliers, fmt.a_bits)
        xk = plugin.unpack(q, fmt.a_bits).numpy() * s.numpy()[:, None] + z.numpy()[:, None]
    w = ql.dequantized()
    ref = xk.astype(np.float64) @ w[ql.keep] + xf[:, ql.outliers].astype(np.float64) @ w[ql.outliers]
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=0, atol=2e-3 * np.abs(ref).max())


def test_gptq_with_identity_hessian_is_rtn():
    w = _weights(256, 32)
    q, scale, _ = gptq(w, np.eye(256), np.arange(256), np.zeros(0, np.int64), 4, None, True)
    q_rtn, scale_rtn = quantizer.rtn(w, 4, None, True)
    assert np.array_equal(scale, scale_rtn) and np.array_equal(q, q_rtn)


def test_gptq_beats_rtn_and_error_flows_into_outliers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1024, 64)) @ rng.standard_normal((64, 64))  # correlated inputs (T, K)
    calib, held = x[:512], x[512:]
    w = _weights(64, 16)
    err = lambda ql: float(((held @ (w - ql.dequantized())) ** 2).sum())  # noqa: E731
    keep, outliers = np.arange(8, 64), np.arange(8)
    for keep_, out_ in ((np.arange(64), np.zeros(0, np.int64)), (keep, outliers)):
        q, scale, w_out = gptq(w, calib.T @ calib, keep_, out_, 4, None, True)
        fmt = LinearFormat(4, None, None, len(out_))
        rtn = QuantizedLinear(fmt, keep_, out_, *quantizer.rtn(w[keep_], 4, None, True), w[out_])
        assert err(QuantizedLinear(fmt, keep_, out_, q, scale, w_out)) < 0.8 * err(rtn)
    assert not np.allclose(w_out, w[outliers])  # the outlier rows absorbed error, not copied
