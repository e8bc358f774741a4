"""Find and load a Hugging Face model without ever touching the network."""

from __future__ import annotations

import os
from pathlib import Path

from planforge.errors import AdapterError, ModelNotFoundError, UnsupportedArchitectureError

# Nothing planforge does at run time may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_dir(model: str) -> Path:
    """A local model directory, or the snapshot of a hub id already in the local cache."""
    path = Path(model).expanduser()
    if not path.exists() and (path.is_absolute() or model.startswith((".", "~"))):
        raise ModelNotFoundError(f"{model} does not exist. Pass a Hugging Face model directory.")
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model} is a file; pass the Hugging Face model directory that contains it.")
        if not any(path.iterdir()):
            raise ModelNotFoundError(f"{model} is an empty directory. Pass a directory written by `save_pretrained`.")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{model} has no config.json, so it is not a Hugging Face model directory. "
                "Pass a directory written by `model.save_pretrained(DIR)`."
            )
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        raise ModelNotFoundError(
            f"{model} is neither a local directory nor a model in the local Hugging Face cache. "
            f"planforge never downloads at run time: run `huggingface-cli download {model}` on a machine "
            "with network access first, or pass a local model directory."
        ) from None


def load_config(model_dir: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(
            f"transformers cannot read {model_dir / 'config.json'}: {exc}. "
            "Check the model_type, or upgrade transformers if the family is newer than it."
        ) from None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read the config in {model_dir}: {exc}") from None


def load_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # planforge shows its own progress
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load the weights in {model_dir}: {exc}. The directory needs model.safetensors "
            "(or pytorch_model.bin) next to config.json."
        ) from None
    return model.eval()


def merge_lora(model, adapter_dir: Path):
    """Folds a PEFT LoRA adapter into the base weights (W += B·A·scale)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(
            f"{adapter_dir} has no adapter_config.json. Pass a directory written by a PEFT model's `save_pretrained`."
        )
    try:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).merge_and_unload()
    except Exception as exc:  # peft raises many types for mismatched adapters
        raise AdapterError(f"cannot merge the adapter in {adapter_dir} into this model: {exc}") from None
    return merged.eval()


def load_tokenizer(model_dir: Path):
    """The model's fast tokenizer, or None when it has none (export still succeeds)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception:
        return None
    return tokenizer if getattr(tokenizer, "is_fast", False) else None
