"""The torch backend against the independent oracle, ONNX Runtime on the same portable graph: every family
in fp32, left padding, streaming past the window, sparsity and W4A16; and its refusals."""

import shutil

import numpy as np
import onnx
import pytest

from planforge.errors import BackendMismatchError, BackendUnavailableError, UnsupportedOpError
from planforge.graph_passes.api import OptimizeOptions, optimize
from planforge.graph_passes.contextual_sparsity import SparsityOptions
from planforge.graph_passes.schemes import QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions
from planforge.manifest import Manifest
from planforge.runtime import open_backend
from planforge.runtime.backends import backends

ATOL = 1e-4  # fp32 logits: the two engines differ only in summation order
DECODE_STEPS = 8


def prefill_then_decode(backend, ids: np.ndarray, mask: np.ndarray, steps: int = DECODE_STEPS) -> list[np.ndarray]:
    """Left-padded prefill, then greedy decode fed with the oracle's tokens (``ids`` carries them)."""
    B, P = mask.shape
    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    logits, cache = backend.forward(ids[:, :P], mask, pos, backend.empty_cache(B))
    out = [logits * mask[..., None]]  # padding rows are never read
    for t in range(steps):
        # a streaming cache holds fewer positions than were seen: the mask covers what it holds
        full = np.concatenate([mask, np.ones((B, t + 1), np.int64)], axis=1)[:, -(cache.length + 1):]
        step_pos = pos[:, -1:] + t + 1
        logits, cache = backend.forward(ids[:, P + t:P + t + 1], full, step_pos, cache)
        out.append(logits)
    return out


def assert_backends_agree(model_dir, atol=ATOL, seed=0, prompt=6, pad=2, steps=DECODE_STEPS):
    vocab = Manifest.load(model_dir).dims.vocab_size
    ids = np.random.default_rng(seed).integers(1, vocab, (2, prompt + steps))
    mask = np.ones((2, prompt), np.int64)
    mask[1, :pad] = 0
    oracle = prefill_then_decode(open_backend(model_dir, "onnxruntime"), ids, mask, steps)
    torch_run = prefill_then_decode(open_backend(model_dir, "torch"), ids, mask, steps)
    for step, (a, b) in enumerate(zip(torch_run, oracle)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"step {step}")


def test_torch_is_registered_for_portable_models():
    spec = backends()["torch"]
    assert "portable" in spec.targets and set(spec.devices) == {"cpu", "cuda"}
    assert "portable" not in spec.default_for  # ONNX Runtime stays the default for portable models


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2"])
def test_every_family_matches_onnxruntime(tiny_model, family):
    assert_backends_agree(tiny_model(family)[1])


def test_streaming_past_the_window_matches_onnxruntime(tiny_model, tmp_path):
    out = tmp_path / "stream"
    optimize(tiny_model("llama")[1], out, OptimizeOptions(streaming=StreamingOptions(2, 6), target="portable"))
    assert_backends_agree(out, prompt=5, pad=0, steps=10)  # 15 tokens through an 8-slot cache


def random_predictor(dims, path):
    """A random single predictor for ``dims`` (selections then differ per row and per step)."""
    from planforge.sparsity.predictor import Predictor, PredictorHeader, expected_shapes

    header = PredictorHeader(kind="single", criterion="plainact", num_layers=dims.num_layers, num_heads=dims.num_heads,
                             num_kv_heads=dims.num_kv_heads, hidden_size=dims.hidden_size,
                             intermediate_size=dims.intermediate_size, head_hidden=16, neuron_hidden=16)
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(header).items()}
    tensors.update({k: np.abs(v) + 0.5 for k, v in tensors.items() if k.endswith("input_std")})
    Predictor(header, tensors).save(path)


def test_sparse_decode_matches_onnxruntime(tiny_model, tmp_path):
    exported = tiny_model("llama")[1]
    predictor = tmp_path / "predictor.safetensors"
    random_predictor(Manifest.load(exported).dims, predictor)
    out = tmp_path / "sparse"
    optimize(exported, out, OptimizeOptions(sparsity=SparsityOptions(0.5, 0.5, predictor), target="portable"))
    assert any(n.op_type == "If" for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert_backends_agree(out)


def test_w4a16_matches_onnxruntime(tiny_model, tmp_path):
    out = tmp_path / "w4a16"
    optimize(tiny_model("llama")[1], out, OptimizeOptions(quant=QuantOptions(scheme="w4a16", group=32),
                                                          target="portable"))
    assert_backends_agree(out)


def test_repeat_cache_matches_onnxruntime(tiny_model):
    model = tiny_model("qwen2")[1]
    ids = np.array([[5, 6, 7, 8]])
    results = []
    for name in ("onnxruntime", "torch"):
        backend = open_backend(model, name)
        _, cache = backend.forward(ids, np.ones_like(ids), np.arange(4)[None], backend.empty_cache(1))
        cache = backend.repeat_cache(cache, 3)
        cont = np.array([[9], [10], [11]])
        logits, _ = backend.forward(cont, np.ones((3, 5), np.int64), np.full((3, 1), 4), cache)
        results.append(logits)
    np.testing.assert_allclose(results[1], results[0], atol=ATOL, rtol=0)


def test_a_model_lowered_for_onnxruntime_is_refused(tiny_model, tmp_path):
    out = tmp_path / "ort"
    optimize(tiny_model("llama")[1], out, OptimizeOptions(quant=QuantOptions(scheme="w4a16", group=32)))
    with pytest.raises(BackendMismatchError, match="built for target 'onnxruntime'; the torch backend runs portable"):
        open_backend(out, "torch")


def test_an_op_without_a_torch_implementation_is_named(tiny_model, tmp_path):
    model_dir = tmp_path / "foreign"
    shutil.copytree(tiny_model("llama")[1], model_dir)
    model = onnx.load(str(model_dir / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    node.op_type, node.domain = "FastGelu", "com.microsoft"
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"uses com\.microsoft::FastGelu, which the torch backend cannot run"):
        open_backend(model_dir, "torch")


def test_cuda_without_a_gpu_says_so(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="--device cuda needs an NVIDIA GPU"):
        open_backend(tiny_model("llama")[1], "torch", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cuda_matches_onnxruntime_cpu(tiny_model, family):
    model = tiny_model(family)[1]
    vocab = Manifest.load(model).dims.vocab_size
    ids = np.random.default_rng(1).integers(1, vocab, (2, 14))
    mask = np.ones((2, 6), np.int64)
    oracle = prefill_then_decode(open_backend(model, "onnxruntime"), ids, mask)
    cuda = prefill_then_decode(open_backend(model, "torch", device="cuda"), ids, mask)
    for a, b in zip(cuda, oracle):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)  # TF32 matmuls are off by default; cuBLAS order differs
