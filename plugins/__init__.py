"""Custom ops: one folder per op with its ONNX schema, torch reference, Triton kernel and TensorRT registration."""
