"""Custom ops: one folder per op with its ONNX schema, torch reference, Triton kernel and TensorRT registration.

Every op lives in ``plugins/<op>/``:

- ``schema.py``: the ONNX contract (domain ``planforge``, op name, version, inputs,
  outputs, attributes, shape inference) that graph lowering and the TensorRT
  plugin follow;
- ``reference.py``: plain torch, runs on CPU, the single source of truth for the
  op's numbers;
- ``kernel.py``: the Triton kernel (Triton is imported lazily, on first use);
- ``ops.py``: the ``torch.library.custom_op`` (``torch.ops.planforge.*``) with its
  fake (shape) implementation; CUDA tensors run the kernel, CPU tensors the
  reference.

Ops: ``fused_attention``, ``kv_cache_update``, ``w4a4_gemm``, ``sparse_mlp``,
``sparse_heads``. See ``docs/kernels.md`` for the benchmark table.
"""

DOMAIN = "planforge"
