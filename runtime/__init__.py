"""planforge.runtime: load a compiled model and generate text.

Imports without torch or transformers: ONNX Runtime, numpy and tokenizers only.
"""

from planforge.runtime.generator import GenerationConfig, GenerationResult, Generator
from planforge.runtime.manifest import Manifest
from planforge.runtime.sampling import SamplingConfig
from planforge.runtime.session import Session
from planforge.runtime.tokenizer import Tokenizer

__all__ = ["GenerationConfig", "GenerationResult", "Generator", "Manifest", "SamplingConfig", "Session", "Tokenizer"]
