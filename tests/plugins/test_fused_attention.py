"""fused_attention: the reference against an independent per-query formulation (CPU), the
Triton kernels against the reference (GPU)."""

import math

import pytest
import torch

from planforge.plugins.fused_attention import (
    PREFILL,
    attention_decode,
    attention_prefill,
    fused_attention_decode,
    fused_attention_prefill,
)
from tests_plugins_tol import KERNEL_TOL  # noqa: F401  (placeholder replaced below)
