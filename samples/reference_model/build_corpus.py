"""Build the reference model's plain-text corpus from offline Sphinx documentation.

Sources are Debian packages of HTML documentation (``SOURCES``; install with
``apt-get install python3.11-doc python-django-doc python-pandas-doc
python-scipy-doc``). Each HTML page is one document. Only the page's main
content element (``role="main"``, or Django's ``#yui-main``) is kept;
navigation, sidebars and the "¶" header links are dropped. Index pages, tables
of contents, source listings and changelogs are skipped. Conversion uses only
the standard library (``html.parser``), so the corpus is rebuilt byte for byte
with no network.

Pages are split by page, after a seeded shuffle of each source's sorted page
list, so no held-out page is ever seen in training:
  * test: 6% of the Python 3.11 pages (the main domain); ships as
    ``heldout.txt`` and feeds ``accuracy.jsonl``. The other sources have none,
    which keeps the shipped held-out text a few hundred KB.
  * val: 3% of every source's pages; only steers training (step count).
  * train: the rest.

    python samples/reference_model/build_corpus.py --out .refdata
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

SEED = 1234
VAL_FRACTION = 0.03
MIN_CHARS = 100


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    root: Path
    test_fraction: float
    excluded: str        # regex on the page path; index pages and changelogs are lists, not prose


COMMON_EXCLUDED = r"^_|(^|/)(contents|index|genindex.*|py-modindex|search)\.html$"
SOURCES = (
    Source("python", "python3.11-doc", Path("/usr/share/doc/python3.11/html"), 0.06,
           r"^(download|copyright|license)\.html$|^whatsnew/changelog\.html$"),
    Source("django", "python-django-doc", Path("/usr/share/doc/python-django-doc/html"), 0.0, r"$^"),
    Source("pandas", "python-pandas-doc", Path("/usr/share/doc/python-pandas-doc/html"), 0.0, r"^whatsnew/"),
    Source("scipy", "python-scipy-doc", Path("/usr/share/doc/python-scipy-doc/html"), 0.0, r"^release"),
)

BLOCK_TAGS = {
    "p", "div", "section", "pre", "li", "ul", "ol", "dl", "dt", "dd", "table",
    "tr", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr",
    "figure", "caption", "thead", "tbody",
}
SKIP_TAGS = {"script", "style"}
SKIP_CLASSES = {"headerlink", "prev-next-area"}   # "¶" anchors; previous/next page links
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "source"}


class DocBodyText(HTMLParser):
    """Collects the text of the main content element, keeping ``<pre>`` verbatim."""

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
            if attr.get("role") == "main" or attr.get("id") == "yui-main":
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
        if tag in SKIP_TAGS or SKIP_CLASSES.intersection(classes):
            self.skip_depth = 1
            return
        if "classifier" in classes:     # numpydoc "name : type", the colon is CSS
            self.parts.append(" : ")
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


def list_pages(source: Source) -> list[str]:
    pages = sorted(p.relative_to(source.root).as_posix() for p in source.root.rglob("*.html"))
    return [p for p in pages
            if not re.search(COMMON_EXCLUDED, p) and not re.search(source.excluded, p)]


def split_pages(source: Source, seed: int) -> dict[str, list[str]]:
    shuffled = list_pages(source)
    random.Random(f"{seed}/{source.name}").shuffle(shuffled)
    n_test = round(len(shuffled) * source.test_fraction)
    n_val = round(len(shuffled) * VAL_FRACTION)
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test:n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".refdata"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    missing = [s.package for s in SOURCES if not s.root.is_dir()]
    if missing:
        raise SystemExit(f"documentation not found: `apt-get install {' '.join(missing)}` first")

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"seed": args.seed, "sources": {s.name: s.package for s in SOURCES}}
    files = {name: (args.out / f"{name}.jsonl").open("w", encoding="utf-8")
             for name in ("train", "val", "test")}
    for source in SOURCES:
        for split, pages in split_pages(source, args.seed).items():
            n_pages = n_chars = 0
            for page in pages:
                html = (source.root / page).read_text(encoding="utf-8", errors="replace")
                text = html_to_text(html)
                if len(text) < MIN_CHARS:     # redirect stubs
                    continue
                n_pages += 1
                n_chars += len(text)
                files[split].write(json.dumps({"source": source.name, "page": page, "text": text},
                                              ensure_ascii=False) + "\n")
            manifest[f"{source.name}/{split}"] = {"pages": n_pages, "chars": n_chars}
            print(f"{source.name:7s} {split:5s}: {n_pages:5d} pages {n_chars / 1e6:6.2f} M chars")
    for name, f in files.items():
        f.close()
        manifest[f"{name}.jsonl sha256"] = hashlib.sha256((args.out / f"{name}.jsonl").read_bytes()).hexdigest()
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
