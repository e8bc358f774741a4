"""Lazy access to Triton for the plugin kernels.

Importing a plugin package never imports Triton: CI machines have no GPU and no
Triton. Kernels call :func:`require_triton` on their first use instead.
"""

from __future__ import annotations

import os


class TritonNotAvailableError(ImportError):
    """Raised when a Triton kernel is asked for on a machine without Triton."""


def require_triton():
    """Returns the ``triton`` module or raises an error that says what to do."""
    try:
        import triton  # noqa: PLC0415 (lazy on purpose)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise TritonNotAvailableError(
            "Triton is not installed: `pip install planforge[gpu]` on a machine with an "
            "NVIDIA GPU, or run the op's torch reference (CPU tensors use it automatically)."
        ) from exc
    return triton


def triton_available() -> bool:
    try:
        require_triton()
    except TritonNotAvailableError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_kernel(t) -> bool:
    """Whether a tensor should go to the Triton kernel rather than the torch reference.

    The kernels take float16 and bfloat16; float32 (the exactness oracle) runs the reference anywhere."""
    import torch  # noqa: PLC0415 (plugins import torch only where a tensor already exists)

    return t.dtype in (torch.float16, torch.bfloat16) and (t.is_cuda or (interpreting() and triton_available()))


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


TMA_ALIGN = 16  # bytes: a TMA descriptor needs its base and every stride but the last aligned to this


def tma_aligned(t, strides=None) -> bool:
    """Whether a TMA descriptor can read t (with ``strides`` in place of t's own, if given)."""
    strides = list(t.stride()) if strides is None else strides
    return strides[-1] == 1 and t.data_ptr() % TMA_ALIGN == 0 and \
        all((st * t.element_size()) % TMA_ALIGN == 0 for st in strides[:-1])
