"""Graph passes that rewrite exported ONNX models (quantization, sparsity, streaming).

The exporter's output is the canonical form these passes match: one opset-23
``Attention`` node per layer, ``RotaryEmbedding`` / ``RMSNormalization`` where
the architecture has them, and one ``MatMul`` per linear layer whose weight
initializer is named after the source module (see ``planforge.constants``).
"""
