"""Find and load a Hugging Face model without ever touching the network."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from planforge.errors import (AdapterError, CheckpointError, ModelNotFoundError, UnsupportedArchitectureError,
                              UnsupportedConfigError)

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
            f"planforge never downloads at run time: run `hf download {model}` on a machine "
            "with network access first, or pass a local model directory."
        ) from None


def refuse_model_code(model_dir: Path) -> None:
    """Refuses a model whose config or tokenizer names Python code of its own (``auto_map``).

    planforge never executes code shipped with a model: transformers would import the directory's
    ``configuration_*.py`` / ``modeling_*.py`` / ``tokenization_*.py`` for such a model (after asking on a
    terminal, which a piped ``yes`` answers). Read as plain JSON, before transformers sees the directory.
    """
    import json

    for name in ("config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            continue  # unreadable files get their own error where they are loaded
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            architecture = ", ".join((data.get("architectures") or []) or [str(data.get("model_type", "?"))])
            raise UnsupportedArchitectureError(
                f"{path} maps {architecture} to Python code shipped with the model ({', '.join(auto_map)}); "
                "planforge never runs model code. Use a checkpoint of a transformers-native architecture "
                "(see README, supported families), or convert this one to it.")


def load_config(model_dir: Path):
    from transformers import AutoConfig

    refuse_model_code(model_dir)
    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
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
    refuse_model_code(model_dir)
    # Errors only, from here on: transformers' load report would print what the checks below refuse, and its
    # deprecation notices about its own cache arguments are noise to a planforge user.
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # torch.load's advice to unpickle anyway is not ours to give
            warnings.simplefilter("ignore")
            model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                               trust_remote_code=False, output_loading_info=True)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load the weights in {model_dir}: {exc}. The directory needs model.safetensors "
            "(or pytorch_model.bin) next to config.json."
        ) from None
    except (KeyError, ValueError, TypeError) as exc:  # raised while building the model from its config
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "ignore_mismatched_sizes" in first:
            raise CheckpointError(_unreadable_weights(model_dir, exc)) from None
        raise UnsupportedConfigError(f"transformers cannot build the model from {model_dir / 'config.json'}: "
                                     f"{type(exc).__name__} {first}. A value there is one it does not accept; fix "
                                     "config.json or use the checkpoint's original one.") from None
    except Exception as exc:  # noqa: BLE001 (safetensors, pickle and torch raise their own types)
        raise CheckpointError(_unreadable_weights(model_dir, exc)) from None
    _check_complete(model_dir, info)
    return model.eval()


def _unreadable_weights(model_dir: Path, exc: Exception) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return (f"the weights in {model_dir} are a pickle holding more than tensors, which planforge never "
                "unpickles (it could run code). Use a checkpoint saved as model.safetensors "
                "(`model.save_pretrained(DIR)` writes one).")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "ignore_mismatched_sizes" in first:  # transformers refuses tensors shaped unlike the config
        return (f"the checkpoint in {model_dir} has tensors whose shapes do not match its config.json. Use the "
                "checkpoint this config belongs to.")
    return (f"the weights in {model_dir} cannot be read ({first}): the file is truncated or corrupt. "
            "Copy or download the checkpoint again.")


def _check_complete(model_dir: Path, info: dict) -> None:
    """Refuses a checkpoint that lacks tensors (transformers would fill them with random values), has them in
    another shape, or holds tensors the config has no place for (a checkpoint of another model)."""
    problems = [
        ("lacks", sorted(info.get("missing_keys") or []), "the config needs; exporting would fill them with random "
         "values. Use a complete checkpoint."),
        ("has wrongly shaped", [str(m[0] if isinstance(m, (tuple, list)) else m)
                                for m in info.get("mismatched_keys") or []],
         "for its config; exporting would replace them with random values. Use the checkpoint this config "
         "belongs to."),
        ("has", sorted(info.get("unexpected_keys") or []), "its config has no place for (a checkpoint of another "
         "model?). Use the checkpoint this config belongs to."),
    ]
    for what, names, why in problems:
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise CheckpointError(f"the checkpoint in {model_dir} {what} {len(names)} tensor(s) ({shown}) {why}")


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
    refuse_model_code(model_dir)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception:
        return None
    return tokenizer if getattr(tokenizer, "is_fast", False) else None


def forward(model, **inputs):
    """``model(**inputs)`` without transformers' FutureWarning about renaming ``past_key_values``: the old name
    is the one every supported transformers version takes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        return model(**inputs)
