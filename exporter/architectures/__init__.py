"""One adapter per model family; importing this package registers them all."""

from planforge.exporter.architectures import gemma, gpt2, granite, llama, mistral, opt, phi3, qwen2, qwen3, smollm3  # noqa: F401
