"""Text in and out with the ``tokenizers`` library (tokenizer.json), so the runtime needs no transformers."""

from __future__ import annotations

from pathlib import Path

from planforge.errors import TokenizerMissingError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(model_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerMissingError(
                f"{model_dir} has no {TOKENIZER_FILE}, so it cannot take text. Pass token ids, or export "
                "from a model directory that holds a fast tokenizer (tokenizer.json).")
        self._tokenizer = HFTokenizer.from_file(str(path))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class TextStreamer:
    """Turns one row's token callbacks into text deltas, holding back incomplete UTF-8."""

    def __init__(self, tokenizer: Tokenizer, write, row: int = 0, prefix: str = ""):
        self.tokenizer, self.write, self.row = tokenizer, write, row
        self._ids: list[int] = []
        self._emitted = ""
        self._prefix = prefix  # written with the first token, e.g. the prompt itself

    def __call__(self, row: int, token: int) -> None:
        if row != self.row:
            return
        self._ids.append(token)
        text = self.tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return
        self.write(self._prefix + text[len(self._emitted):])
        self._prefix, self._emitted = "", text
