"""Text in and out with the ``tokenizers`` library (tokenizer.json), so nothing here needs transformers.

Every layer encodes text the same way through this class (calibration, evaluation,
``planforge run``), so the same text always gives the same ids.
"""

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
