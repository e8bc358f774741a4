"""Importance labels against finite differences of the loss and independently captured activations."""

import numpy as np
import pytest
import torch

from planforge.errors import CalibrationDataError, ImportanceFileError
from planforge.sparsity.importance import (calibration_windows, compute_importance, load_importance,
                                           read_calibration_text, save_importance, window_importance)
from planforge.sparsity.masking import masked_logits
from sparsity_support import F, H, L, V, llama


def summed_loss(model, ids, head_scale, neuron_scale):
    logits = masked_logits(model, ids, head_scale, neuron_scale)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("criterion", ["plainact", "fisher"])
def test_first_order_labels_equal_finite_differences(criterion):
    model = llama().double()
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    out = window_importance(model, ids, criterion)
    eps = 1e-3  # LlamaRMSNorm computes in fp32 even in a float64 model, so smaller steps are noisier
    for layer, b, t in [(0, 0, 2), (1, 1, 0), (1, 0, 5)]:
        n = b * 6 + t  # token index after dropping each window's last token
        # the largest entries, so the tolerance is far below the value checked
        h, f = int(out["heads"][n, layer].argmax()), int(out["neurons"][n, layer].argmax())
        diffs = []
        for which, shape, idx in (("heads", (L, 2, 7, H), h), ("neurons", (L, 2, 7, F), f)):
            up, down = torch.ones(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
            up[layer, b, t, idx], down[layer, b, t, idx] = 1 + eps, 1 - eps
            args = lambda s: (s, None) if which == "heads" else (None, s)  # noqa: E731
            d = (summed_loss(model, ids, *args(up)) - summed_loss(model, ids, *args(down))) / (2 * eps)
            diffs.append(d.abs() if criterion == "plainact" else d.square())
        # central differences: O(eps^2) truncation plus fp32 rounding of the loss (~1e-4 here)
        torch.testing.assert_close(out["heads"][n, layer, h], diffs[0], rtol=2e-3, atol=5e-4)
        torch.testing.assert_close(out["neurons"][n, layer, f], diffs[1], rtol=2e-3, atol=5e-4)
        assert diffs[0] > 1e-2 and diffs[1] > 1e-2  # the checked entries are not trivially zero


def test_l2_labels_and_inputs_match_captured_activations():
    model, ids = llama(), torch.randint(0, V, (1, 6))
    seen = {}
    hooks = [model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.update(n=a[0])),
             model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.update(h=a[0], x0=o)),
             model.model.layers[1].register_forward_hook(lambda m, a, o: seen.update(x1=a[0]))]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    out = window_importance(model, ids, "l2")
    torch.testing.assert_close(out["neurons"][:, 1], seen["n"][0, :-1].abs(), rtol=1e-6, atol=1e-7)
    heads = seen["h"][0, :-1].reshape(5, H, -1).norm(dim=-1)
    torch.testing.assert_close(out["heads"][:, 0], heads, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["layer0_attention_output"], seen["x0"][0, :-1], rtol=0, atol=0)
    torch.testing.assert_close(out["layer_inputs"][:, 1], seen["x1"][0, :-1], rtol=0, atol=0)


def test_file_round_trip_and_windows(tmp_path):
    model = llama()
    windows = calibration_windows(list(range(50)), samples=3, seq_len=8, source="x")
    assert windows.shape == (3, 8) and windows[1, 0] == 8
    imp = compute_importance(model, windows % V, "plainact", batch=2)
    assert imp.tensors["heads"].shape == (21, L, H) and imp.tensors["window"].tolist()[:8] == [0] * 7 + [1]
    save_importance(imp, tmp_path / "i.safetensors")
    back = load_importance(tmp_path / "i.safetensors")
    assert back.header == imp.header
    for key, value in imp.tensors.items():
        np.testing.assert_array_equal(back.tensors[key], value)


def test_bad_calibration_inputs(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        read_calibration_text(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CalibrationDataError, match="is empty"):
        read_calibration_text(tmp_path / "empty.txt")
    with pytest.raises(CalibrationDataError, match="fewer than one window"):
        calibration_windows([1, 2, 3], samples=2, seq_len=8, source="short.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ImportanceFileError, match="not an importance file"):
        load_importance(tmp_path / "bad.safetensors")
    with pytest.raises(ImportanceFileError, match="does not exist"):
        load_importance(tmp_path / "none.safetensors")


def test_padded_rows_score_like_unpadded_ones():
    model = llama()
    ids = torch.randint(1, V, (2, 9), generator=torch.Generator().manual_seed(4))
    ids[1, 6:] = 0  # row 1 is 6 tokens long, right-padded
    both = window_importance(model, ids, "plainact", lengths=[9, 6], keep_last=True)
    alone = window_importance(model, ids[1:, :6], "plainact", keep_last=True)
    assert both["heads"].shape == (18, L, H)
    torch.testing.assert_close(both["heads"][9:15], alone["heads"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(both["neurons"][9:15], alone["neurons"], rtol=1e-4, atol=1e-6)
    assert both["heads"][14].abs().max() == 0  # the last real token predicts nothing
