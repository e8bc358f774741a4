"""sparse_mlp: the reference against a dense MLP with masked neurons (CPU); the Triton
kernel against the reference (GPU)."""

import pytest
import torch

from planforge.plugins.sparse_mlp import SPARSE_MLP, sparse_mlp
from planforge.plugins.sparse_mlp import reference as ref


def _dense_masked_mlp(x, w_gate, w_up, w_down, keep):
    """The Hugging Face LLaMA MLP in float64 with unselected neurons zeroed after the activation."""
    h = torch.nn.functional.silu(x.double() @ w_gate.double().T) * (x.double() @ w_up.double().T)  # (B, F)
    return (h * keep) @ w_down.double().T  # (B, d)


def test_reference_matches_dense_mlp_with_masked_neurons():
    g = torch.Generator().manual_seed(0)
    B, d, F, k = 3, 16, 40, 11
    x = torch.randn(B, d, generator=g)
    w_gate, w_up = torch.randn(2, F, d, generator=g) * 0.3
    w_down = torch.randn(d, F, generator=g) * 0.3  # (d, F) as in Hugging Face
    neurons = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)]).to(torch.int32)
    keep = torch.zeros(B, F, dtype=torch.float64).scatter_(1, neurons.long(), 1.0)
    want = _dense_masked_mlp(x, w_gate, w_up, w_down, keep)
    got = sparse_mlp(x, w_gate, w_up, w_down.T.contiguous(), neurons)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # every neuron selected: the dense MLP
    all_neurons = torch.arange(F, dtype=torch.int32).expand(B, F)
    torch.testing.assert_close(ref.sparse_mlp(x, w_gate, w_up, w_down.T.contiguous(), all_neurons).double(),
                               _dense_masked_mlp(x, w_gate, w_up, w_down, torch.ones(B, F, dtype=torch.float64)),
                               atol=1e-5, rtol=1e-5)
    assert SPARSE_MLP.qualified_name == "planforge::SparseMLP"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,d,F,k", [(1, 4096, 11008, 5504), (4, 512, 1376, 100), (3, 100, 300, 1), (2, 4096, 11008, 11008)])
def test_kernel_matches_reference(dtype, B, d, F, k):
    gen = torch.Generator(device="cuda").manual_seed(d + k)
    x = torch.randn(B, d, device="cuda", generator=gen).to(dtype)
    w_gate, w_up, w_down_t = ((torch.randn(F, d, device="cuda", generator=gen) * d**-0.5).to(dtype) for _ in range(3))
    neurons = torch.stack([torch.randperm(F, device="cuda", generator=gen)[:k] for _ in range(B)]).to(torch.int32)
    got = sparse_mlp(x, w_gate, w_up, w_down_t, neurons)
    want = ref.sparse_mlp(x, w_gate, w_up, w_down_t, neurons)
    # both accumulate in float32 (different order) and round once to the output dtype
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    torch.testing.assert_close(got.float(), want.float(), rtol=2 * eps, atol=2 * eps * want.abs().max().item())
    # the two halves TensorRT's graph runs as separate ops (SparseMLPGateUp, SparseMLPDown): no atomics, and
    # the same result on every run
    ops = torch.ops.planforge
    halves = [ops.sparse_mlp_down(ops.sparse_mlp_gate_up(x, w_gate, w_up, neurons), w_down_t, neurons)
              for _ in range(2)]
    torch.testing.assert_close(halves[0].float(), want.float(), rtol=2 * eps, atol=2 * eps * want.abs().max().item())
    assert torch.equal(halves[0], halves[1])
