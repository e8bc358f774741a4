"""Build the reference model's plain-text corpus from the offline Python docs.

Source: the Debian package ``python3.11-doc`` (``apt-get install python3.11-doc``),
HTML under ``/usr/share/doc/python3.11/html``. Each HTML page is one document.
Only the page's main ``<div class="body">`` is kept; navigation, sidebars and
the "¶" header links are dropped. Conversion uses only the standard library
(``html.parser``), so the corpus is rebuilt byte for byte with no network.

Documents are split train / val / test by page, after a seeded shuffle of the
sorted page list, so no page of the test split is ever seen in training. The
val split only steers training (loss curve); the test split is what ships as
``heldout.txt`` and feeds ``accuracy.jsonl``.

    python samples/reference_model/build_corpus.py --out .refdata
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
SEED = 1234
VAL_FRACTION = 0.03
TEST_FRACTION = 0.06

# Index pages, tables of contents and the changelog are lists, not prose.
EXCLUDED = re.compile(
    r"^(contents|index|genindex.*|py-modindex|search|download|copyright|license)\.html$"
    r"|^whatsnew/changelog\.html$|^_"
)

BLOCK_TAGS = {
    "p", "div", "section", "pre", "li", "ul", "ol", "dl", "dt", "dd", "table",
    "tr", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr",
    "figure", "caption", "thead", "tbody",
}
SKIP_TAGS = {"script", "style"}
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "source"}


class DocBodyText(HTMLParser):
    """Collects the text of ``<div class="body">``, keeping ``<pre>`` verbatim."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0          # element depth inside the body div, 0 = outside
        self.skip_depth = 0     # > 0 while inside an element whose text is dropped
        self.pre_depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if self.depth == 0:
            if tag == "div" and "body" in classes and attr.get("role") == "main":
                self.depth = 1
            return
        if tag in VOID_TAGS:
            if tag in BLOCK_TAGS:
                self.parts.append("\n")
            return
        self.depth += 1
        if self.skip_depth:
            self.skip_depth += 1
            return
        if tag in SKIP_TAGS or "headerlink" in classes:
            self.skip_depth = 1
            return
        if tag == "pre":
            self.pre_depth = self.depth
        if tag in BLOCK_TAGS:
            self.parts.append("\n\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 0 or tag in VOID_TAGS:
            return
        if self.skip_depth:
            self.skip_depth -= 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n")
        if self.pre_depth == self.depth:
            self.pre_depth = 0
        self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth == 0 or self.skip_depth:
            return
        if self.pre_depth:
            self.parts.append("\x00" + data.replace("\n", "\x01") + "\x00")
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        raw = "".join(self.parts)
        # Outside <pre>: trim each line; inside: newlines were masked as \x01.
        lines = [line.strip() for line in raw.split("\n")]
        text = "\n".join(lines)
        text = re.sub(r"\n{3,}", "\n\n", text)
        text = text.replace("\x00", "").replace("\x01", "\n")
        return text.strip() + "\n"


def html_to_text(html: str) -> str:
    parser = DocBodyText()
    parser.feed(html)
    parser.close()
    return parser.text()


def list_pages(root: Path) -> list[str]:
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html"))
    return [p for p in pages if not EXCLUDED.search(p)]


def split_pages(pages: list[str], seed: int) -> dict[str, list[str]]:
    shuffled = list(pages)
    random.Random(seed).shuffle(shuffled)
    n_test = round(len(shuffled) * TEST_FRACTION)
    n_val = round(len(shuffled) * VAL_FRACTION)
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test:n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DOC_ROOT)
    ap.add_argument("--out", type=Path, default=Path(".refdata"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} not found: `apt-get install python3.11-doc` first")

    args.out.mkdir(parents=True, exist_ok=True)
    splits = split_pages(list_pages(args.root), args.seed)
    manifest = {"source": "Debian python3.11-doc", "root": str(args.root), "seed": args.seed}
    for name, pages in splits.items():
        path = args.out / f"{name}.jsonl"
        n_chars = 0
        with path.open("w", encoding="utf-8") as f:
            for page in pages:
                text = html_to_text((args.root / page).read_text(encoding="utf-8"))
                n_chars += len(text)
                f.write(json.dumps({"page": page, "text": text}, ensure_ascii=False) + "\n")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest[name] = {"pages": len(pages), "chars": n_chars, "sha256": digest}
        print(f"{name:5s}: {len(pages):4d} pages {n_chars / 1e6:6.2f} M chars -> {path}")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
