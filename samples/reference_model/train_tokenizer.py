"""Train the reference model's byte-level BPE tokenizer and encode the corpus.

Trains on the train split only (``build_corpus.py`` output), vocabulary 8192,
one special token ``<|endoftext|>`` that serves as BOS, EOS and PAD. The
tokenizer prepends it to every encoded text, so a document always starts the
way it did in training. Saved in Hugging Face form (``tokenizer.json`` +
``tokenizer_config.json``) for ``AutoTokenizer.from_pretrained``.

The train and val splits are then encoded to flat uint16 token streams,
``<|endoftext|> doc <|endoftext|> doc ...``, that ``train.py`` reads on the GPU.

    python samples/reference_model/train_tokenizer.py --corpus .refdata \
        --out samples/reference_model --tokens .reftok
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 8192
EOT = "<|endoftext|>"


def read_docs(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def train_bpe(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    eot_id = tok.token_to_id(EOT)
    assert eot_id == 0, eot_id
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, eot_id)]
    )
    return tok


def save_hf(tok: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
        unk_token=None, clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(out)


def encode_stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    encs = tok.encode_batch(docs, add_special_tokens=True)   # each starts with EOT
    ids = [i for e in encs for i in e.ids] + [tok.token_to_id(EOT)]
    assert max(ids) < 2**16
    return np.asarray(ids, dtype=np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path(".refdata"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--tokens", type=Path, default=Path(".reftok"))
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args()

    tok = train_bpe(read_docs(args.corpus / "train.jsonl"), args.vocab_size)
    save_hf(tok, args.out)
    digest = hashlib.sha256((args.out / "tokenizer.json").read_bytes()).hexdigest()
    print(f"tokenizer: vocab {tok.get_vocab_size()} -> {args.out} (sha256 {digest[:16]})")

    args.tokens.mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
    for split in ("train", "val"):
        docs = read_docs(args.corpus / f"{split}.jsonl")
        ids = encode_stream(tok, docs)
        ids.tofile(args.tokens / f"{split}.u16")
        chars = sum(len(d) for d in docs)
        meta[split] = {"tokens": int(ids.size), "chars_per_token": round(chars / ids.size, 3)}
        print(f"{split:5s}: {ids.size:9d} tokens, {chars / ids.size:.2f} chars/token")
    (args.tokens / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
