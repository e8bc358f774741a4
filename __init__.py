"""planforge: compile Hugging Face decoder LLMs into ONNX Runtime models and TensorRT engines.

The repository root is this package; its sub-packages are the top-level
folders ``exporter/``, ``graph_passes/``, ``plugins/``, ``runtime/``,
``compare/`` and ``cli/``.
"""

__version__ = "0.1.0"
