"""Torch reference semantics of contextual sparsity (the "masked model").

Per token, an unselected attention head's output is zeroed before ``o_proj`` and an unselected
MLP neuron's ``act(gate) * up`` is zeroed before ``down_proj``; K and V are always computed, so
the KV cache is complete whatever the selection. The ONNX graph pass must equal this.

Implemented with forward pre-hooks on ``o_proj`` / ``down_proj`` of the transformers model, so
the model code itself is untouched. The functions run on the model's device: ``input_ids`` are
moved there, and the returned tensors stay there (``.cpu()`` them before ``.numpy()``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from planforge.errors import UnsupportedArchitectureError

# hook(layer, activation (B, S, n, [head_dim])) -> activation of the same shape
ActivationFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SparseDims:
    num_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int


def sparse_dims(hf_model) -> SparseDims:
    """The layer/head/neuron counts of a Llama-style model (self_attn.o_proj, mlp.down_proj)."""
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if layers is None or not all(hasattr(l, "self_attn") and hasattr(l.self_attn, "o_proj") and
                                 hasattr(l, "mlp") and hasattr(l.mlp, "down_proj") for l in layers):
        raise UnsupportedArchitectureError(
            f"contextual sparsity needs a Llama-style model (self_attn.o_proj and mlp.down_proj per layer); "
            f"{type(hf_model).__name__} has another layout. Use a Llama, Mistral or Qwen2 model.")
    cfg = hf_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return SparseDims(len(layers), cfg.num_attention_heads, head_dim, cfg.intermediate_size)


@contextlib.contextmanager
def activation_hooks(hf_model, on_heads: Optional[ActivationFn], on_neurons: Optional[ActivationFn]) -> Iterator[SparseDims]:
    """Routes every layer's per-head attention output / per-neuron activation through the callbacks."""
    dims = sparse_dims(hf_model)
    handles = []

    def heads_hook(layer):
        def hook(module, args):
            (x,) = args  # (B, S, H*Dh)
            a = x.reshape(*x.shape[:-1], dims.num_heads, dims.head_dim)  # (B, S, H, Dh)
            return (on_heads(layer, a).reshape(x.shape),)
        return hook

    def neurons_hook(layer):
        def hook(module, args):
            (x,) = args  # (B, S, F)
            return (on_neurons(layer, x),)
        return hook

    try:
        for layer, block in enumerate(hf_model.model.layers):
            if on_heads is not None:
                handles.append(block.self_attn.o_proj.register_forward_pre_hook(heads_hook(layer)))
            if on_neurons is not None:
                handles.append(block.mlp.down_proj.register_forward_pre_hook(neurons_hook(layer)))
        yield dims
    finally:
        for handle in handles:
            handle.remove()


def model_device(hf_model) -> torch.device:
    """The device of the model's parameters (where its inputs must be)."""
    return next(hf_model.parameters()).device


def top_k_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """scores (..., n) -> bool mask (..., n) keeping k = max(1, int(n*(1-sparsity)+0.5)) highest."""
    assert 0.0 <= sparsity < 1.0, sparsity
    n = scores.shape[-1]
    k = max(1, int(n * (1.0 - sparsity) + 0.5))
    idx = torch.topk(scores, k, dim=-1).indices  # (..., k)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)


def _check_mask(mask, want: tuple[int, ...], what: str):
    assert mask is None or tuple(mask.shape) == want, f"{what} mask has shape {tuple(mask.shape)}, want {want}"


@torch.no_grad()
def masked_logits(hf_model, input_ids: torch.Tensor, head_mask: Optional[torch.Tensor],
                  neuron_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """input_ids (B, S); head_mask (L, B, S, H) / neuron_mask (L, B, S, F) bool or None -> logits (B, S, V)."""
    dims = sparse_dims(hf_model)
    B, S = input_ids.shape
    _check_mask(head_mask, (dims.num_layers, B, S, dims.num_heads), "head")
    _check_mask(neuron_mask, (dims.num_layers, B, S, dims.intermediate_size), "neuron")
    input_ids = input_ids.to(model_device(hf_model))
    on_heads = None if head_mask is None else (lambda l, a: a * head_mask[l, ..., None].to(a.device, a.dtype))
    on_neurons = None if neuron_mask is None else (lambda l, a: a * neuron_mask[l].to(a.device, a.dtype))
    with activation_hooks(hf_model, on_heads, on_neurons):
        return hf_model(input_ids=input_ids, use_cache=False).logits  # (B, S, V)


class _Stop(Exception):
    pass


@torch.no_grad()
def layer0_attention_output(hf_model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (B, S) -> layer 0's o_proj output (B, S, d), the single predictor's input (dense)."""
    sparse_dims(hf_model)
    input_ids = input_ids.to(model_device(hf_model))
    captured = {}

    def hook(module, args, output):
        captured["x"] = output
        raise _Stop

    handle = hf_model.model.layers[0].self_attn.o_proj.register_forward_hook(hook)
    try:
        hf_model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


@torch.no_grad()
def predicted_masks(hf_model, predictor, input_ids: torch.Tensor, head_sparsity: float,
                    mlp_sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Single predictor -> (head_mask (L, B, S, H), neuron_mask (L, B, S, F)); layer 0 heads all True."""
    B, S = input_ids.shape
    x = layer0_attention_output(hf_model, input_ids).reshape(B * S, -1)  # (B*S, d)
    heads, neurons = predictor.scores_torch(x)  # (B*S, L, H), (B*S, L, F)
    head_mask = top_k_mask(heads, head_sparsity).permute(1, 0, 2).reshape(-1, B, S, heads.shape[-1])
    neuron_mask = top_k_mask(neurons, mlp_sparsity).permute(1, 0, 2).reshape(-1, B, S, neurons.shape[-1])
    head_mask[0] = True
    return head_mask, neuron_mask


@torch.no_grad()
def per_layer_predicted_logits(hf_model, predictor, input_ids: torch.Tensor, head_sparsity: float,
                               mlp_sparsity: float) -> torch.Tensor:
    """DejaVu-style: layer l's predictor reads the (already sparse) hidden state entering layer l.

    Layer 0's heads stay dense, as with the single predictor, so the two are compared fairly.
    """
    dims = sparse_dims(hf_model)
    input_ids = input_ids.to(model_device(hf_model))
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def predict(layer):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]  # (B, S, d)
            heads, neurons = predictor.layer_scores_torch(layer, x.reshape(-1, x.shape[-1]))
            head_mask = top_k_mask(heads, head_sparsity).reshape(*x.shape[:2], -1)  # (B, S, H)
            if layer == 0:
                head_mask[:] = True
            masks[layer] = (head_mask, top_k_mask(neurons, mlp_sparsity).reshape(*x.shape[:2], -1))
        return hook

    handles = [block.register_forward_pre_hook(predict(l), with_kwargs=True)
               for l, block in enumerate(hf_model.model.layers[: dims.num_layers])]
    try:
        with activation_hooks(hf_model, lambda l, a: a * masks[l][0][..., None].to(a.dtype),
                              lambda l, a: a * masks[l][1].to(a.dtype)):
            return hf_model(input_ids=input_ids, use_cache=False).logits  # (B, S, V)
    finally:
        for handle in handles:
            handle.remove()
