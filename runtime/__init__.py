"""planforge.runtime: load a compiled model on a backend and generate text.

Imports without torch or transformers: ONNX Runtime, numpy and tokenizers only
(a backend's own heavy dependencies are imported when it is opened).
"""

from planforge.manifest import Manifest
from planforge.runtime.backends import Backend, open_backend
from planforge.runtime.generator import GenerationConfig, GenerationResult, Generator
from planforge.runtime.sampling import SamplingConfig
from planforge.tokenizer import Tokenizer

__all__ = ["Backend", "GenerationConfig", "GenerationResult", "Generator", "Manifest", "SamplingConfig", "Tokenizer",
           "open_backend"]
