"""Text in and out with the ``tokenizers`` library (tokenizer.json), so nothing here needs transformers.

Every layer encodes text the same way through this class (calibration, evaluation,
``planforge run``), so the same text always gives the same ids.

BOS, decided once: text is encoded with the special tokens the tokenizer's own
post-processor adds (a BOS for the Llama family, nothing for GPT-2), exactly as
transformers' ``tokenizer(text)`` does. The exporter writes those tokens as explicit
``add_bos_token`` / ``add_eos_token`` flags into tokenizer_config.json, which is what
ONNX Runtime GenAI's tokenizer reads: with ``update_options(add_special_tokens="true")``
it gives the same ids (its default encodes without special tokens).
"""

from __future__ import annotations

from pathlib import Path

from planforge.errors import TextFileError, TokenizerMissingError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def read_text(path: str | Path, flag: str) -> str:
    """The UTF-8 text of a file named by ``flag`` (``--ppl``, ``--calib``, ``--input``), or one clear error."""
    path = Path(path)
    if path.is_dir():
        raise TextFileError(f"{flag} {path} is a directory; give a text file.")
    if not path.is_file():
        raise TextFileError(f"{flag} {path}: no such file.")
    try:
        return decode_utf8(path.read_bytes(), f"{flag} {path}")
    except OSError as exc:
        raise TextFileError(f"{flag} {path} cannot be read: {exc.strerror or exc}.") from None


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFileError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                            "(e.g. `iconv -t utf-8`).") from None


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(model_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerMissingError(
                f"{model_dir} has no {TOKENIZER_FILE}, so it cannot take text. Pass token ids, or export "
                "from a model directory that holds a fast tokenizer (tokenizer.json).")
        try:
            self._tokenizer = HFTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 (tokenizers raises a bare Exception for a bad file)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerMissingError(f"{path} is not a tokenizer file the tokenizers library can read "
                                        f"({first}). Re-export the model, or copy tokenizer.json again.") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def pin_special_tokens(directory: str | Path) -> None:
    """Writes the BOS/EOS the tokenizer adds to a text as explicit flags in tokenizer_config.json (see above)."""
    import json

    from tokenizers import Tokenizer as HFTokenizer

    config_path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not config_path.is_file() or not (Path(directory) / TOKENIZER_FILE).is_file():
        return
    tokenizer = HFTokenizer.from_file(str(Path(directory) / TOKENIZER_FILE))
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = start > 0
    config["add_eos_token"] = len(full) > start + len(plain)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
