"""Why 50% contextual sparsity is not faster on ONNX Runtime CPU: one MLP's decode step, dense vs gathered.

    python samples/bench_gather_gemv.py --hidden 512 --intermediate 1408

Times, on ONNX Runtime CPU, the two forms of one gated MLP for one token that the sparse graph's
decode branch and the dense graph execute (graph_passes/contextual_sparsity.py):

- dense: MatMul(h, W_gate), MatMul(h, W_up), Mul, MatMul(y, W_down);
- gathered: Gather(k rows of [W_gate^T W_up^T]), MatMul(rows, h^T), Mul, Gather(k rows of W_down),
  MatMul(y, rows), for k = keep x intermediate neurons;

each as its own ONNX model with random fp32 weights and new random neuron indices per call.
Prints medians over --calls calls (interleaved) and the ratio to dense.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, output, initializers):
    graph = helper.make_graph(nodes, "mlp", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def dense_mlp(wg, wu, wd):
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, wg.shape[0]])
    nodes = [helper.make_node("MatMul", ["h", "wg"], ["g"]), helper.make_node("MatMul", ["h", "wu"], ["u"]),
             helper.make_node("Mul", ["g", "u"], ["y"]), helper.make_node("MatMul", ["y", "wd"], ["out"])]
    return _model(nodes, [h], "out", {"wg": wg, "wu": wu, "wd": wd})


def gathered_mlp(wg, wu, wd):
    d, f = wg.shape
    gate_up = np.concatenate([wg.T, wu.T], axis=1)  # [F, 2d]: gate and up rows of a neuron side by side
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [d, 1])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["k"])
    gathers = [helper.make_node("Gather", ["gate_up", "idx"], ["gu_rows"], axis=0),
               helper.make_node("Gather", ["wd", "idx"], ["d_rows"], axis=0)]
    shape = numpy_helper.from_array(np.array([-1, d], np.int64), "rows_shape")
    nodes = gathers + [
        helper.make_node("Reshape", ["gu_rows", "rows_shape"], ["gu_flat"]),  # [2k, d]
        helper.make_node("MatMul", ["gu_flat", "h"], ["gu"]),  # [2k, 1]
        helper.make_node("Reshape", ["gu", "pair_shape"], ["pair"]),  # [k, 2]
        helper.make_node("Split", ["pair"], ["g", "u"], axis=1, num_outputs=2),
        helper.make_node("Mul", ["g", "u"], ["y_col"]),
        helper.make_node("Transpose", ["y_col"], ["y"], perm=[1, 0]),
        helper.make_node("MatMul", ["y", "d_rows"], ["out"])]
    model = _model(nodes, [h, idx], "out", {"gate_up": gate_up, "wd": wd})
    model.graph.initializer.extend([shape, numpy_helper.from_array(np.array([-1, 2], np.int64), "pair_shape")])
    return model


def session(model: onnx.ModelProto, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512, help="d (the reference model: 512)")
    parser.add_argument("--intermediate", type=int, default=1408, help="F (the reference model: 1408)")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3, 0.1], help="kept fractions of F")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)")
    args = parser.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    d, f = args.hidden, args.intermediate
    wg, wu = (rng.standard_normal((d, f), dtype=np.float32) for _ in range(2))
    wd = rng.standard_normal((f, d), dtype=np.float32)
    h = rng.standard_normal((1, d), dtype=np.float32)
    variants = {"dense": (session(dense_mlp(wg, wu, wd), args.threads), None)}
    for keep in args.keep:
        k = max(1, round(keep * f))
        variants[f"gathered {keep:.0%}"] = (session(gathered_mlp(wg, wu, wd), args.threads), k)
    for name, (sess, k) in variants.items():  # each variant computes the MLP of its kept neurons
        idx = np.arange(f) if k is None else rng.choice(f, k, replace=False)
        want = ((h @ wg[:, idx]) * (h @ wu[:, idx])) @ wd[idx]
        got = sess.run(None, {"h": h} if k is None else {"h": h.T.copy(), "idx": idx})[0]
        error = float(np.abs(got - want).max() / np.abs(want).max())
        if error > 1e-4:
            raise SystemExit(f"{name}: differs from numpy by {error:.1e} of max|y|")
    times = {name: [] for name in variants}
    for _ in range(args.calls):
        for name, (sess, k) in variants.items():
            feeds = {"h": h} if k is None else {"h": h.T.copy(), "idx": rng.choice(f, k, replace=False)}
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    print(f"machine: {platform.machine()} {platform.system()} {platform.release()}; onnxruntime {ort.__version__} CPU, "
          f"threads {args.threads or 'default'}; one gated MLP, d={d}, F={f}, fp32, batch 1, one token; "
          f"medians of {args.calls} interleaved calls\n")
    dense = statistics.median(times["dense"])
    print("| variant | kept neurons | weight bytes read (MB) | median (us) | time vs dense |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, k) in variants.items():
        kept = f if k is None else k
        median = statistics.median(times[name])
        print(f"| {name} | {kept} | {3 * kept * d * 4 / 1e6:.2f} | {median * 1e6:.1f} | {median / dense:.2f}x |")


if __name__ == "__main__":
    main()
