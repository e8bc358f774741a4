"""Streaming text out of the generator's token callbacks (the tokenizer itself is ``planforge.tokenizer``)."""

from __future__ import annotations

from planforge.tokenizer import Tokenizer


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
