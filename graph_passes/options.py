"""``OptimizeOptions``: everything ``planforge optimize`` can be asked for, read by each pass's ``from_options``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from planforge.graph_passes.contextual_sparsity import SparsityOptions
from planforge.graph_passes.quantize_embedding import validate_embedding
from planforge.graph_passes.schemes import SCHEMES, QuantOptions
from planforge.graph_passes.streaming_attention import StreamingOptions

# What model.onnx is written for: lowered onto ONNX Runtime's own kernels (the fast default on the
# embedded runtime), or the portable standard-op QDQ graph (the semantic reference, what TensorRT reads).
# torch: lowered onto planforge's plugin ops (`planforge build --target torch`).
OPTIMIZE_TARGETS = ("onnxruntime", "portable", "torch", "tensorrt")
# MatMulNBits compute for 4-bit weights on --target onnxruntime: 4 = int8 activations per block (fast; what
# ONNX Runtime GenAI ships), 1 = float32 (exact dequantization of the portable graph's weights).
ACCURACY_LEVELS = (1, 4)


@dataclass(frozen=True)
class OptimizeOptions:
    quant: Optional[QuantOptions] = None  # None: no quantization of the linears ("--quant none")
    embedding: Optional[str] = None  # float | int8 | int4; None: the scheme's weight bits (float without --quant)
    calib: Optional[Path] = None
    calib_samples: int = 32
    calib_seq_len: Optional[int] = None  # default: min(256, max_seq_len)
    streaming: Optional[StreamingOptions] = None  # None: the full KV cache
    sparsity: Optional[SparsityOptions] = None  # None: dense (no contextual sparsity)
    target: str = "onnxruntime"
    accuracy_level: int = 4
    allow_partial: bool = False  # --target torch: keep what a lowering rule refuses as standard ops
    force: bool = False
    show_progress: bool = False

    def embedding_storage(self, tied: bool) -> str:
        """The token table's storage: explicit, else (auto) the scheme's weight bits when the LM head is tied to
        the table (int4 for w4a4/w4a16, int8 for w8a8), float otherwise (an untied table would be dequantized
        whole at every step for a lookup of a few rows)."""
        if self.embedding is not None:
            validate_embedding(self.embedding)
            return self.embedding
        return f"int{SCHEMES[self.quant.scheme].base.w_bits}" if self.quant is not None and tied else "float"
