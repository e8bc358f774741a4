"""The predictor file format: exact round trip, clear errors for bad files and wrong models."""

import json

import numpy as np
import pytest
import torch

from planforge.errors import PredictorError, PredictorMismatchError, PredictorNotFoundError
from planforge.manifest import Dims
from planforge.sparsity.predictor import Predictor

from sparsity_support import random_predictor


@pytest.mark.parametrize("kind", ["single", "per_layer"])
def test_round_trip_is_exact(tmp_path, kind):
    pred = random_predictor(kind)
    pred.save(tmp_path / "p.safetensors")
    back = Predictor.load(tmp_path / "p.safetensors")
    assert back.header == pred.header
    assert set(back.tensors) == set(pred.tensors)
    for name, value in pred.tensors.items():
        np.testing.assert_array_equal(back.tensors[name], value)
    assert not list(tmp_path.glob(".*partial*"))


def test_scores_match_a_manual_forward():
    pred = random_predictor("single")
    x = torch.randn(5, 16)
    heads, neurons = pred.scores_torch(x)
    t = pred.tensors
    z = (x.numpy() - t["input_mean"]) / t["input_std"]
    h = np.maximum(z @ t["heads.fc1.weight"].T + t["heads.fc1.bias"], 0) @ t["heads.fc2.weight"].T + t["heads.fc2.bias"]
    n = np.maximum(z @ t["neurons.fc1.weight"].T + t["neurons.fc1.bias"], 0) @ t["neurons.fc2.weight"].T + t["neurons.fc2.bias"]
    np.testing.assert_allclose(heads.numpy(), h.reshape(5, 2, 4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(neurons.numpy(), n.reshape(5, 2, 24), rtol=1e-5, atol=1e-5)
    # score index: layer l, head h -> l*H + h
    np.testing.assert_allclose(heads[:, 1, 3].numpy(), h[:, 1 * 4 + 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["single", "per_layer"])
def test_scores_follow_the_input_device(kind):
    """Weights go to the input's device once (cached); "meta" stands in for a GPU on CPU-only CI."""
    pred = random_predictor(kind)
    score = (lambda x: pred.scores_torch(x)) if kind == "single" else (lambda x: pred.layer_scores_torch(1, x))
    heads, neurons = score(torch.randn(5, 16, device="meta"))
    assert heads.device.type == neurons.device.type == "meta"
    assert heads.shape[0] == neurons.shape[0] == 5 and heads.shape[-1] == 4 and neurons.shape[-1] == 24
    cached = {k: v[1] for k, v in pred._device_tensors.items()}
    score(torch.randn(5, 16, device="meta"))
    assert all(pred._device_tensors[k][1] is v for k, v in cached.items())  # copied once, not per call
    assert score(torch.randn(5, 16))[0].device.type == "cpu"


def test_fp16_file_loads_as_fp32(tmp_path):
    pred = random_predictor()
    pred.save(tmp_path / "p.safetensors", dtype="fp16")
    back = Predictor.load(tmp_path / "p.safetensors")
    for name, value in pred.tensors.items():
        assert back.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(back.tensors[name], value.astype(np.float16).astype(np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(PredictorNotFoundError, match="does not exist"):
        Predictor.load(tmp_path / "nope.safetensors")


def test_garbage_file(tmp_path):
    (tmp_path / "p.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(PredictorError, match="not a readable safetensors"):
        Predictor.load(tmp_path / "p.safetensors")


def test_truncated_file(tmp_path):
    random_predictor().save(tmp_path / "p.safetensors")
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "p.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PredictorError):
        Predictor.load(tmp_path / "p.safetensors")


def test_safetensors_without_header(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "p.safetensors"))
    with pytest.raises(PredictorError, match="not a planforge sparsity predictor"):
        Predictor.load(tmp_path / "p.safetensors")


def test_header_tensor_disagreement(tmp_path):
    from safetensors.numpy import save_file

    pred = random_predictor()
    header = json.loads(json.dumps(pred.header.__dict__))
    header["head_hidden"] = 9
    save_file(pred.tensors, str(tmp_path / "p.safetensors"), metadata={"planforge_predictor": json.dumps(header)})
    with pytest.raises(PredictorError, match="heads.fc1.weight has shape"):
        Predictor.load(tmp_path / "p.safetensors")


def test_wrong_model_dims_name_both():
    pred = random_predictor()
    dims = Dims(num_layers=2, hidden_size=16, num_heads=8, num_kv_heads=2, head_dim=2, intermediate_size=24,
                vocab_size=10, max_seq_len=8)
    with pytest.raises(PredictorMismatchError, match="num_heads 4 vs the model's 8"):
        pred.check_matches(dims)
    pred.check_matches(Dims(num_layers=2, hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4,
                            intermediate_size=24, vocab_size=10, max_seq_len=8))
