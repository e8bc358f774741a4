"""Write the shipped evaluation files from the test split (never seen in training).

``heldout.txt``: the test-split pages, joined by blank lines.

``accuracy.jsonl``: multiple choice, one JSON object a line,
``{"context": str, "choices": [str] * 4, "label": int, "page": str}``.
The context is the 64-128 tokens of held-out text before a cut inside a prose
paragraph, starting at a word boundary and ending without trailing space. The
true choice is the next 3-6 words, with a leading space; the 3 distractors are
word spans of the same length from other prose paragraphs of the *same* page
(same topic, so the choice needs the context, not just the page's vocabulary).
Score a choice by the summed log-probability of its tokens after the context.

    python samples/reference_model/make_eval_set.py --corpus .refdata
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from transformers import AutoTokenizer

SEED = 1234
N_ITEMS = 300
HERE = Path(__file__).parent


def is_prose(paragraph: str) -> bool:
    """One line of mostly words: not code, not a table, not a heading."""
    if "\n" in paragraph or len(paragraph) < 200 or paragraph.startswith(">>>"):
        return False
    words = paragraph.split()
    alpha = sum(w.strip(".,;:()\"'“”").isalpha() for w in words)
    return alpha / len(words) > 0.7


def prose_paragraphs(text: str) -> list[tuple[int, str]]:
    """(char offset, paragraph) for every prose paragraph of a page."""
    out, pos = [], 0
    for par in text.split("\n\n"):
        if is_prose(par):
            out.append((pos, par))
        pos += len(par) + 2
    return out


def word_span(paragraph: str, start_word: int, n: int) -> str:
    return " " + " ".join(paragraph.split(" ")[start_word:start_word + n])


def make_item(rng: random.Random, tok, page: str, text: str) -> dict | None:
    pars = prose_paragraphs(text)
    if len(pars) < 4:
        return None
    (offset, par), *_ = rng.sample(pars, 1)
    words = par.split(" ")
    n = rng.randint(3, 6)
    if len(words) < n + 9:
        return None
    cut = rng.randint(8, len(words) - n)                   # >= 8 words of the paragraph in context
    before = text[:offset] + " ".join(words[:cut])
    ids = tok(before, add_special_tokens=False).input_ids
    keep = rng.randint(64, 128)
    if len(ids) < keep + 8:
        return None
    context = tok.decode(ids[-keep:])
    if " " not in context.strip():
        return None
    context = context[context.index(" ") + 1:] if not context[0].isspace() else context.lstrip()
    true = word_span(par, cut, n)
    choices = {true}
    others = [p for o, p in pars if o != offset and len(p.split(" ")) > n]
    rng.shuffle(others)
    for other in others:
        w = rng.randint(0, len(other.split(" ")) - n)
        span = word_span(other, w, n)
        if span.strip() and span not in choices:
            choices.add(span)
        if len(choices) == 4:
            break
    if len(choices) < 4:
        return None
    distractors = sorted(choices - {true})
    rng.shuffle(distractors)
    label = rng.randrange(4)
    return {"context": context, "choices": distractors[:label] + [true] + distractors[label:],
            "label": label, "page": page}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path(".refdata"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--items", type=int, default=N_ITEMS)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()

    with (args.corpus / "test.jsonl").open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    (args.out / "heldout.txt").write_text("\n".join(d["text"] for d in docs), encoding="utf-8")

    tok = AutoTokenizer.from_pretrained(args.out, local_files_only=True)
    rng = random.Random(args.seed)
    items, tries = [], 0
    while len(items) < args.items:
        tries += 1
        assert tries < 100 * args.items, "too few prose paragraphs in the test split"
        d = rng.choice(docs)
        item = make_item(rng, tok, d["page"], d["text"])
        if item is not None:
            items.append(item)
    with (args.out / "accuracy.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    pages = len({i["page"] for i in items})
    print(f"heldout.txt: {len(docs)} pages; accuracy.jsonl: {len(items)} items from {pages} pages")


if __name__ == "__main__":
    main()
