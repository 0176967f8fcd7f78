"""Shared by tests/test_book.py and tests/test_book_browser.py: the built book and a
parser of its HTML (standard library only).

The book is built once per test session by ``tools/build_book.py`` into ``build/book``
(what ``make book`` builds; Sphinx rebuilds only what changed, so a second run takes
seconds), or into ``$MLSCALE_BOOK_OUT`` when that is set (``MLSCALE_BOOK_OUT=$(mktemp -d)``
for a build from scratch).
"""
from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import pathlib
import posixpath
import sys
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
BOOK_DEPS = ("sphinx", "myst_nb", "sphinx_book_theme")


def missing_deps() -> list[str]:
    return [m for m in BOOK_DEPS if importlib.util.find_spec(m) is None]


_BUILT: dict[str, pathlib.Path] = {}


def built_html() -> pathlib.Path:
    """Build the book (once per session) and return its ``html`` folder."""
    out = pathlib.Path(os.environ.get("MLSCALE_BOOK_OUT") or build_book.DEFAULT_OUT)
    if str(out) not in _BUILT:
        _BUILT[str(out)] = build_book.build(out)
    return _BUILT[str(out)]


def notebook_image_outputs(nb_path: pathlib.Path) -> int:
    """How many figures a notebook's stored outputs hold (one per output with an image;
    myst-nb renders the richest one of each output, an image where there is one)."""
    nb = json.loads(nb_path.read_text())
    return sum(1 for cell in nb["cells"] for out in cell.get("outputs", [])
               if any(m in out.get("data", {}) for m in IMAGE_MIMES))


def notebook_title(nb_path: pathlib.Path) -> str:
    """The first Markdown heading of a notebook (the page's title)."""
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise AssertionError(f"{nb_path.name}: no '# ' heading in any Markdown cell")


class Page(html.parser.HTMLParser):
    """What the tests need from one HTML page: its ids, its links (a, link, img, script,
    with the element's tag), the images inside notebook output cells, and the text of
    its h1 and h2 headings."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []        # (tag, url)
        self.anchors: list[dict] = []                 # the attributes of every <a>
        self.output_images: list[str] = []           # src of <img> in a .cell_output
        self.headings: dict[str, list[str]] = {"h1": [], "h2": []}
        self._stack: list[tuple[str, bool]] = []      # (tag, inside a cell output)
        self._heading: list[str] | None = None
        self._heading_tag = ""
        self.feed(text)

    VOID = {"img", "link", "meta", "br", "hr", "input", "source", "area", "base", "col",
            "embed", "param", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        inside = bool(self._stack and self._stack[-1][1]) or \
            "cell_output" in (a.get("class") or "").split()
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        url = a.get("href") if tag in ("a", "link") else a.get("src") if tag in ("img", "script") else None
        if url:
            self.links.append((tag, url))
        if tag == "a":
            self.anchors.append(a)
        if tag == "img" and inside and a.get("src"):
            self.output_images.append(a["src"])
        if tag in self.headings:
            self._heading, self._heading_tag = [], tag
        if tag not in self.VOID:
            self._stack.append((tag, inside))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        for i in range(len(self._stack) - 1, -1, -1):    # tolerate unclosed tags
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break
        if tag == self._heading_tag and self._heading is not None:
            self.headings[tag].append(" ".join("".join(self._heading).split()).rstrip("#").strip())
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)


def is_internal(url: str) -> bool:
    """A link within the site: no scheme (http:, mailto:, data:, javascript:), no host;
    a bare ``#`` (a button's target) is none."""
    if url.startswith("#"):
        return len(url) > 1
    u = urllib.parse.urlsplit(url)
    return not u.scheme and not u.netloc


def site_pages(html_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every page of the site by its path ('notebooks/02_collectives.html'); not the
    theme's template macros Sphinx copies into _static/."""
    html_dir = pathlib.Path(html_dir)
    return {p.relative_to(html_dir).as_posix(): p for p in sorted(html_dir.rglob("*.html"))
            if not p.relative_to(html_dir).as_posix().startswith("_static/")}


def broken_links(html_dir: pathlib.Path) -> list[str]:
    """Every internal link of every page that does not resolve: a missing file, or a
    ``#fragment`` with no such id in its target page. Each as 'page: url (why)'."""
    html_dir = pathlib.Path(html_dir)
    pages = site_pages(html_dir)
    parsed: dict[str, Page] = {}

    def page(rel):
        if rel not in parsed:
            parsed[rel] = Page(pages[rel].read_text(errors="replace"))
        return parsed[rel]

    bad = []
    for rel in sorted(pages):
        for tag, url in page(rel).links:
            if not is_internal(url):
                continue
            u = urllib.parse.urlsplit(url)
            path = urllib.parse.unquote(u.path)
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), path)) if path else rel
            if target.startswith("../"):
                bad.append(f"{rel}: {url} (points outside the site)")
                continue
            f = html_dir / target
            if f.is_dir():
                target, f = posixpath.join(target, "index.html"), f / "index.html"
            if not f.is_file():
                bad.append(f"{rel}: {url} ({target} does not exist)")
            elif u.fragment and target.endswith(".html") and \
                    urllib.parse.unquote(u.fragment) not in page(target).ids:
                bad.append(f"{rel}: {url} (no id {u.fragment!r} in {target})")
    return bad
