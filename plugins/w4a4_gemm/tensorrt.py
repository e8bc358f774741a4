"""``planforge::QuikQuantize`` and ``planforge::QuikMatMul`` as TensorRT QDP plugins, both AOT: the
quantizer's kernel and the INT8-tensor-core GEMM (whole K per program) are embedded in the
engine. TensorRT has no W4A4 of its own: it quantizes weights only to INT4.

Written against the documented ``tensorrt.plugin`` API (TensorRT >= 10.9); not run on a machine
with TensorRT. See ``plugins/_tensorrt.py`` for the conventions.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorrt.plugin as trtp

from planforge.plugins import _tensorrt as glue
from planforge.plugins.aot import compile_entry

from .schema import MATMUL, QUANTIZE

QUANTIZE_NAME = QUANTIZE.qualified_name
MATMUL_NAME = MATMUL.qualified_name

# GEMM tactics: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SWAP_AB, warps, stages). 1 is the Python
# launcher's decode tile (kernel.SMALL_M_CONFIG without its K split); 2 and 3 are its autotuner's
# large tiles that fit an AOT launch's 48 KiB of shared memory. TensorRT times them per profile.
GEMM_TACTICS = {
    1: (16, 64, 128, 1, True, 4, 4),
    2: (128, 128, 64, 8, False, 8, 4),
    3: (128, 128, 128, 8, False, 8, 3),
}


# ---- QuikQuantize --------------------------------------------------------------------------------

@trtp.register(QUANTIZE_NAME)
def quik_quantize_desc(x: trtp.TensorDesc, perm: trtp.TensorDesc, n_outliers: int = 0,
                       bits: int = 4) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
    return glue.output_descs(QUANTIZE, [x, perm], {"n_outliers": n_outliers, "bits": bits})


@trtp.autotune(QUANTIZE_NAME)
def quik_quantize_tactics(x: trtp.TensorDesc, perm: trtp.TensorDesc, n_outliers: int, bits: int,
                          outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(QUANTIZE), "LINEAR")]


@trtp.aot_impl(QUANTIZE_NAME)
def quik_quantize_aot(x: trtp.TensorDesc, perm: trtp.TensorDesc, n_outliers: int, bits: int,
                      outputs: Tuple[trtp.TensorDesc]):
    from .kernel import quantize_block_b, quantize_block_o, quantize_entry

    M, K = x.shape_expr
    kqb = (glue.static(K, "QuikQuantize's input width") - n_outliers) * bits // 8
    signature = {"X": glue.pointer(x), "PERM": "*i32", "XQ": "*i8", "SX": "*fp32", "ZX": "*fp32",
                 "XO": glue.pointer(x), **{name: "i32" for name in QUANTIZE_SCALARS}}
    payload = compile_entry(quantize_entry, signature, {"BITS": bits, "BLOCK_B": quantize_block_b(kqb, bits),
                                                        "BLOCK_O": quantize_block_o(n_outliers)})
    return payload.name, payload.ptx, glue.launch(payload, (M,)), \
        glue.scalars(quantize_scalar_values(glue.static(K, "QuikQuantize's input width"), n_outliers, bits))


@trtp.impl(QUANTIZE_NAME)
def quik_quantize_python(x: trtp.Tensor, perm: trtp.Tensor, n_outliers: int, bits: int,
                         outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(QUANTIZE, [x, perm], {"n_outliers": n_outliers, "bits": bits}, outputs, stream)


QUANTIZE_SCALARS = ("KQB", "KO", "sxm", "sxqm", "sxom")  # kernel.quantize_entry's order


def quantize_scalar_values(K: int, n_outliers: int, bits: int) -> list:
    """Bytes of codes per row, outlier columns, and the row strides of x, x_q and x_out (contiguous)."""
    kqb = (K - n_outliers) * bits // 8
    return [kqb, n_outliers, K, kqb, max(1, n_outliers)]


# ---- QuikMatMul ----------------------------------------------------------------------------------

@trtp.register(MATMUL_NAME)
def quik_matmul_desc(x_q: trtp.TensorDesc, x_scale: trtp.TensorDesc, x_zero: trtp.TensorDesc,
                     x_out: trtp.TensorDesc, w_q: trtp.TensorDesc, w_scale: trtp.TensorDesc,
                     w_sum: trtp.TensorDesc, w_out: trtp.TensorDesc, bits: int = 4) -> trtp.TensorDesc:
    return glue.output_descs(MATMUL, [x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out], {"bits": bits})[0]


@trtp.autotune(MATMUL_NAME)
def quik_matmul_tactics(x_q: trtp.TensorDesc, x_scale: trtp.TensorDesc, x_zero: trtp.TensorDesc,
                        x_out: trtp.TensorDesc, w_q: trtp.TensorDesc, w_scale: trtp.TensorDesc,
                        w_sum: trtp.TensorDesc, w_out: trtp.TensorDesc, bits: int,
                        outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(glue.type_combination(MATMUL), "LINEAR", list(GEMM_TACTICS))]


@trtp.aot_impl(MATMUL_NAME)
def quik_matmul_aot(x_q: trtp.TensorDesc, x_scale: trtp.TensorDesc, x_zero: trtp.TensorDesc,
                    x_out: trtp.TensorDesc, w_q: trtp.TensorDesc, w_scale: trtp.TensorDesc,
                    w_sum: trtp.TensorDesc, w_out: trtp.TensorDesc, bits: int,
                    outputs: Tuple[trtp.TensorDesc], tactic: int):
    from .kernel import quik_matmul_entry

    bm, bn, bk, group_m, swap, warps, stages = GEMM_TACTICS[tactic]
    M, KB = x_q.shape_expr
    N = w_q.shape_expr[0]
    KO = glue.static(x_out.shape_expr[1], "QuikMatMul's outlier columns")
    tensor = glue.pointer(x_out)
    signature = {"XQ": "*i8", "SX": "*fp32", "ZX": "*fp32", "XO": tensor, "WQ": "*i8", "SW": "*fp32",
                 "WSUM": "*fp32", "WO": tensor, "Y": tensor, **{name: "i32" for name in MATMUL_SCALARS}}
    payload = compile_entry(quik_matmul_entry, signature,
                            {"BITS": bits, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m,
                             "SWAP_AB": swap}, num_warps=warps, num_stages=stages)
    return payload.name, payload.ptx, glue.launch(payload, matmul_grid(M, N, bm, bn)), \
        glue.scalars(matmul_scalar_values(M, N, KB, KO))


@trtp.impl(MATMUL_NAME)
def quik_matmul_python(x_q: trtp.Tensor, x_scale: trtp.Tensor, x_zero: trtp.Tensor, x_out: trtp.Tensor,
                       w_q: trtp.Tensor, w_scale: trtp.Tensor, w_sum: trtp.Tensor, w_out: trtp.Tensor, bits: int,
                       outputs: Tuple[trtp.Tensor], stream: int) -> None:
    glue.run_torch_op(MATMUL, [x_q, x_scale, x_zero, x_out, w_q, w_scale, w_sum, w_out], {"bits": bits},
                      outputs, stream)


MATMUL_SCALARS = ("M", "N", "KB", "KO", "sxq", "swq", "sxo", "swo", "sy")  # kernel.quik_matmul_entry's order


def matmul_grid(M, N, block_m: int, block_n: int) -> tuple:
    """One program per (BLOCK_M, BLOCK_N) output tile, grouped along M inside the kernel (_tile)."""
    return (glue.cdiv(M, block_m) * glue.cdiv(N, block_n),)


def matmul_scalar_values(M, N, KB, KO: int) -> list:
    """Sizes, then the row strides of x_q, w_q, x_out, w_out and y (contiguous; at least 1 with no outliers)."""
    return [M, N, KB, KO, KB, KB, max(1, KO), max(1, KO), N]
