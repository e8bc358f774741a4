"""Shared helpers for the plugin tests."""

import pytest
import torch

# Output tolerances of a Triton kernel against its float32 reference. Both
# accumulate in float32; the kernel rounds softmax probabilities (and partial
# results) to the input dtype before the second matmul, so the error is a few
# units in the last place of the input dtype.
KERNEL_TOL = {
    torch.float16: dict(atol=4e-3, rtol=1e-2),
    torch.bfloat16: dict(atol=2.5e-2, rtol=2e-2),
}


@pytest.fixture
def cuda_gen():
    g = torch.Generator(device="cuda")
    g.manual_seed(1234)
    return g
