"""The torch masked model against weight-edited copies of the transformers model (no hooks)."""

import copy

import pytest
import torch

from planforge.errors import UnsupportedArchitectureError
from planforge.sparsity.masking import masked_logits, per_layer_predicted_logits, predicted_masks, top_k_mask

from sparsity_support import Dh, F, H, L, V, llama, random_predictor  # noqa: F401


def edited(model, head_keep, neuron_keep):
    """Copy with o_proj input columns of dropped heads and down_proj input columns of dropped neurons zeroed."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            cols = head_keep[layer].repeat_interleave(Dh).float()  # (H*Dh,)
            block.self_attn.o_proj.weight.mul_(cols)
            block.mlp.down_proj.weight.mul_(neuron_keep[layer].float())
    return model


def plain(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_all_true_masks_equal_the_plain_model():
    model, ids = llama(), torch.randint(0, V, (2, 11))
    ones_h, ones_n = torch.ones(L, 2, 11, H, dtype=torch.bool), torch.ones(L, 2, 11, F, dtype=torch.bool)
    torch.testing.assert_close(masked_logits(model, ids, ones_h, ones_n), plain(model, ids), rtol=0, atol=1e-6)
    torch.testing.assert_close(masked_logits(model, ids, None, None), plain(model, ids), rtol=0, atol=1e-6)


def test_same_mask_for_every_token_equals_zeroed_weights():
    model, ids = llama(), torch.randint(0, V, (2, 9))
    g = torch.Generator().manual_seed(1)
    head_keep, neuron_keep = torch.rand(L, H, generator=g) > 0.5, torch.rand(L, F, generator=g) > 0.4
    head_mask = head_keep[:, None, None, :].expand(L, 2, 9, H)
    neuron_mask = neuron_keep[:, None, None, :].expand(L, 2, 9, F)
    got = masked_logits(model, ids, head_mask, neuron_mask)
    want = plain(edited(model, head_keep, neuron_keep), ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain(model, ids)).abs().max() > 1e-2  # the masks do change the output


def test_per_token_masks_in_a_one_layer_model():
    # With one layer, token t's logits depend only on token t's mask (masks act after attention mixing).
    model, S = llama(num_layers=1), 7
    ids = torch.randint(0, V, (1, S))
    g = torch.Generator().manual_seed(2)
    head_mask, neuron_mask = torch.rand(1, 1, S, H, generator=g) > 0.5, torch.rand(1, 1, S, F, generator=g) > 0.5
    got = masked_logits(model, ids, head_mask, neuron_mask)
    for t in range(S):
        want = plain(edited(model, head_mask[:, 0, t], neuron_mask[:, 0, t]), ids)[0, t]
        torch.testing.assert_close(got[0, t], want, rtol=1e-5, atol=1e-5)


def test_top_k_rule():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    assert top_k_mask(scores, 0.5).tolist() == [[False, True, True, False], [True, True, False, False]]
    assert top_k_mask(scores, 0.0).all()
    assert top_k_mask(scores, 0.99).sum(-1).tolist() == [1, 1]  # k never drops below 1
    n = 1408
    for f in (0.25, 0.5, 0.7):
        assert int(top_k_mask(torch.randn(n), f).sum()) == max(1, int(n * (1 - f) + 0.5))


def test_predicted_masks_keep_layer0_heads_and_follow_scores():

    model, ids = llama(), torch.randint(0, V, (1, 5))
    pred = random_predictor("single", L=L, H=H, d=H * Dh, F=F)
    head_mask, neuron_mask = predicted_masks(model, pred, ids, 0.5, 0.5)
    assert head_mask.shape == (L, 1, 5, H) and neuron_mask.shape == (L, 1, 5, F)
    assert head_mask[0].all() and (head_mask[1].sum(-1) == 2).all() and (neuron_mask.sum(-1) == 24).all()
    # independent: the layer-0 o_proj output computed by hand from the plain model
    captured = {}
    handle = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, o: captured.update(x=o))
    plain(model, ids)
    handle.remove()
    heads, neurons = pred.scores_torch(captured["x"][0])
    assert torch.equal(neuron_mask[1, 0], top_k_mask(neurons[:, 1], 0.5))
    assert torch.equal(head_mask[1, 0], top_k_mask(heads[:, 1], 0.5))


def test_per_layer_at_zero_sparsity_is_the_plain_model():

    model, ids = llama(), torch.randint(0, V, (1, 6))
    pred = random_predictor("per_layer", L=L, H=H, d=H * Dh, F=F)
    torch.testing.assert_close(per_layer_predicted_logits(model, pred, ids, 0.0, 0.0), plain(model, ids),
                               rtol=0, atol=1e-6)
    assert (per_layer_predicted_logits(model, pred, ids, 0.5, 0.5) - plain(model, ids)).abs().max() > 1e-3


def test_non_llama_model_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20)).eval()
    with pytest.raises(UnsupportedArchitectureError, match="Llama-style"):
        masked_logits(model, torch.zeros(1, 3, dtype=torch.long), None, None)


def test_per_layer_with_constant_scores_equals_zeroed_weights():
    # fc2 weights 0: every token gets the bias ranking, so the masks are fixed per layer.

    model, ids = llama(), torch.randint(0, V, (2, 6))
    pred = random_predictor("per_layer", L=L, H=H, d=H * Dh, F=F, seed=5)
    for layer in range(L):
        for part in ("heads", "neurons"):
            pred.tensors[f"layers.{layer}.{part}.fc2.weight"][:] = 0
    head_keep = torch.stack([top_k_mask(torch.from_numpy(pred.tensors[f"layers.{l}.heads.fc2.bias"]), 0.5) for l in range(L)])
    head_keep[0] = True  # layer 0 heads stay dense
    neuron_keep = torch.stack([top_k_mask(torch.from_numpy(pred.tensors[f"layers.{l}.neurons.fc2.bias"]), 0.7)
                               for l in range(L)])
    got = per_layer_predicted_logits(model, pred, ids, 0.5, 0.7)
    torch.testing.assert_close(got, plain(edited(model, head_keep, neuron_keep), ids), rtol=1e-5, atol=1e-5)
