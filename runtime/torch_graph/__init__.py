"""An ONNX interpreter in torch (``TorchGraph``), the engine of the torch backend; imports torch."""
