"""The course website in a real browser: headless Chromium opens the built book, served
over HTTP from 127.0.0.1, visits every page and checks what a reader would see.

    PYTHONPATH=$PWD python -m pytest -q tests/test_book_browser.py
    # screenshots: build/book/screenshots/*.png (or $MLSCALE_BOOK_SCREENSHOTS)

- no page throws a JavaScript exception or logs a console error, and no request for a
  file of the site fails (requests to other hosts, CDNs, badges, are cut off on purpose:
  the site must work offline, on its own files);
- every link to a page of the site, as the browser resolves it, reaches a page that
  exists, and its ``#anchor`` is an element of that page;
- each notebook page shows its figures: as many loaded, displayed images as the notebook
  has image outputs;
- the ring all-reduce animation of notebook 02 plays: a click on its Play button changes
  the frame shown (the image and the slider move, the screenshots differ);
- the search page finds a word in the notebook that teaches it;
- a page that is not a notebook (an API page) shows the launch buttons, and a click on
  the rocket opens them.

Chromium is driven over the DevTools protocol with websocket-client (tests/_chromium.py):
no Selenium, no driver binary. Skips, saying how to install it, where Chromium is absent
(``apt install chromium``) or websocket-client is (``pip install -e ".[book]"``).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pathlib
import shutil
import struct
import sys
import threading
import urllib.parse

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _book  # noqa: E402
import _chromium  # noqa: E402
from _book import build_book  # noqa: E402

if _book.missing_deps():
    pytest.skip(f"the book needs {', '.join(_book.missing_deps())}: pip install -e \".[book]\"",
                allow_module_level=True)
CHROMIUM = _chromium.find_chromium()
if CHROMIUM is None:
    pytest.skip(f"MLSCALE_CHROMIUM={os.environ['MLSCALE_CHROMIUM']} is not an executable: "
                f"{_chromium.INSTALL_HINT}" if os.environ.get("MLSCALE_CHROMIUM") else
                "no Chromium found (chromium, chromium-browser, google-chrome on PATH, or "
                f"$MLSCALE_CHROMIUM): {_chromium.INSTALL_HINT}", allow_module_level=True)
try:
    import websocket  # noqa: F401  (websocket-client)
except ImportError:
    pytest.skip("tests/test_book_browser.py drives Chromium with websocket-client: "
                "pip install websocket-client (or pip install -e \".[book]\")", allow_module_level=True)

NOTEBOOKS = build_book.notebooks()
ANIMATED = "notebooks/02_collectives.html"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder):
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port) from a thread: (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def site():
    html = _book.built_html()
    server, base = _serve(html)
    try:
        yield html, base
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shots(site):
    d = pathlib.Path(os.environ.get("MLSCALE_BOOK_SCREENSHOTS") or site[0].parent / "screenshots")
    if d.is_dir():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with _chromium.Chromium.start(CHROMIUM, tmp_path_factory.mktemp("chromium")) as b:
        yield b


FIGURES_JS = """Array.from(document.querySelectorAll('.cell_output img'))
  .filter(i => (i.getAttribute('src') || '').includes('_images/'))
  .map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
              shown: i.getBoundingClientRect().width > 0 && getComputedStyle(i).visibility !== 'hidden'}))"""
LINKS_JS = "Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
IDS_JS = "Array.from(document.querySelectorAll('[id]')).map(e => e.id).concat(" \
         "Array.from(document.querySelectorAll('a[name]')).map(a => a.name))"


@pytest.fixture(scope="module")
def crawl(site, browser, shots):
    """Visit every page of the site once: what went wrong, its links, its ids, its
    figures, and a screenshot of each."""
    html, base = site
    pages = {}
    for rel in _book.site_pages(html):
        visit = browser.visit(base + rel)
        pages[rel] = {
            "visit": visit,
            "links": browser.evaluate(LINKS_JS),
            "ids": set(browser.evaluate(IDS_JS)),
            "figures": browser.evaluate(FIGURES_JS) if rel.startswith("notebooks/") else [],
            "title": browser.evaluate("document.title"),
        }
        browser.screenshot(shots / (rel.replace("/", "__").removesuffix(".html") + ".png"))
    return pages


def test_the_browser_checks_can_fail(browser, tmp_path):
    """What the checks below rely on, on a page made to fail: an exception, a console
    error, a missing image are each reported; a request to another host is cut off and
    reported apart; a good page reports nothing."""
    (tmp_path / "bad.html").write_text(
        "<html><head><title>bad</title></head><body><img src='missing.png'>"
        "<img src='https://example.org/x.png'>"
        "<script>console.error('bad thing')</script><script>throw new Error('boom')</script>"
        "</body></html>")
    (tmp_path / "good.html").write_text("<html><head><title>good</title></head><body><p id=x>ok</p></body></html>")
    server, base = _serve(tmp_path)
    try:
        bad = browser.visit(base + "bad.html")
        good = browser.visit(base + "good.html")
    finally:
        server.shutdown()
        server.server_close()
    assert bad.status == 200 and good.status == 200
    assert len(bad.js_errors) == 2, bad.js_errors
    assert any("boom" in e for e in bad.js_errors) and any("bad thing" in e for e in bad.js_errors)
    assert [f.split(": ")[1] for f in bad.failed_requests] == ["HTTP 404"]
    assert bad.failed_requests[0].startswith(base + "missing.png")
    assert bad.external_blocked == ["https://example.org/x.png"]
    assert (good.js_errors, good.failed_requests, good.external_blocked) == ([], [], [])


def test_every_page_loads_without_errors(crawl):
    assert len(crawl) >= len(NOTEBOOKS) + len(build_book.API_PACKAGES) + 3
    problems = {}
    for rel, page in crawl.items():
        v = page["visit"]
        if v.status != 200 or v.js_errors or v.failed_requests:
            problems[rel] = {"status": v.status, "js_errors": v.js_errors, "failed": v.failed_requests}
    assert problems == {}
    assert all("mlscale" in page["title"] for page in crawl.values())


def test_every_link_within_the_site_reaches_a_page_and_its_anchor(site, crawl):
    html, base = site
    broken = []
    for rel, page in crawl.items():
        for href in page["links"]:
            if not href.startswith(base):
                continue
            u = urllib.parse.urlsplit(href)
            target = urllib.parse.unquote(u.path)[1:] or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if target in crawl:
                if u.fragment and urllib.parse.unquote(u.fragment) not in crawl[target]["ids"]:
                    broken.append(f"{rel}: {href} (no element with that id)")
            elif not (html / target).is_file():      # a download: _sources/..., _images/...
                broken.append(f"{rel}: {href} (no such file)")
    assert broken == []
    # the crawl saw the course from the landing page
    assert {f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS} <= {
        urllib.parse.urlsplit(h).path[1:] for h in crawl["index.html"]["links"]}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_notebook_page_shows_its_figures(crawl, nb):
    figures = crawl[f"notebooks/{nb.stem}.html"]["figures"]
    assert len(figures) == _book.notebook_image_outputs(nb)
    not_shown = [f for f in figures if not (f["complete"] and f["width"] > 0 and f["shown"])]
    assert not_shown == []


def _png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_screenshots_of_every_page(crawl, shots):
    files = sorted(shots.glob("*.png"))
    assert len(files) >= len(crawl)
    for rel in crawl:
        f = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
        w, h = _png_size(f.read_bytes())
        assert (w, h) == (1280, 900), f
    # pages look different from one another (not one blank or error page, many times)
    digests = {hashlib.sha256((shots / "notebooks__{}.png".format(nb.stem)).read_bytes()).hexdigest()
               for nb in NOTEBOOKS}
    assert len(digests) == len(NOTEBOOKS)


ANIM_JS = """(() => {
  const img = document.querySelector('img[id^="_anim_img"]');
  const id = img.id.slice('_anim_img'.length);
  const slider = document.getElementById('_anim_slider' + id);
  const play = Array.from(document.querySelectorAll('button[title="Play"]'))
                    .find(b => (b.getAttribute('onclick') || '').includes('anim' + id + '.'));
  return {src: img.src, frame: slider.value, max: slider.max, play: !!play};
})()"""


def test_the_ring_animation_plays(site, browser, shots):
    html, base = site
    v = browser.visit(base + ANIMATED)
    assert v.js_errors == [] and v.failed_requests == []
    browser.evaluate("document.querySelector('img[id^=\"_anim_img\"]').scrollIntoView({block: 'start'})")
    browser.pump(0.3)
    before = browser.evaluate(ANIM_JS)
    assert before["play"] and int(before["max"]) >= 4 and before["src"].startswith("data:image/png")
    browser.pump(1.2)       # it does not play by itself
    assert browser.evaluate(ANIM_JS)["frame"] == before["frame"]
    shot_before = browser.screenshot(shots / "ring_animation_0_before_play.png")
    # a real click on the player's Play button (its centre, in viewport coordinates)
    box = browser.evaluate("""(() => { const id = document.querySelector('img[id^="_anim_img"]').id.slice(9);
        const b = Array.from(document.querySelectorAll('button[title="Play"]'))
                       .find(b => (b.getAttribute('onclick') || '').includes('anim' + id + '.'));
        const r = b.getBoundingClientRect(); return {x: r.x + r.width / 2, y: r.y + r.height / 2,
        visible: r.top >= 0 && r.bottom <= innerHeight}; })()""")
    assert box["visible"], "the Play button is not on screen with the animation"
    browser.click(box["x"], box["y"])
    seen = {before["src"]}
    for _ in range(3):
        browser.pump(1.0)   # the animation's interval: about 0.9 s a frame
        seen.add(browser.evaluate(ANIM_JS)["src"])
    after = browser.evaluate(ANIM_JS)
    shot_after = browser.screenshot(shots / "ring_animation_1_playing.png")
    assert int(after["frame"]) > int(before["frame"])
    assert len(seen) >= 3, "the frame shown changed fewer than twice in 3 s of playing"
    assert shot_after != shot_before
    errors = browser.report(base + ANIMATED).js_errors
    assert errors == []


LAUNCH_JS = """(() => {
  const vis = e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= innerHeight
           && s.visibility !== 'hidden' && s.display !== 'none'; };
  const d = document.querySelector('.dropdown-launch-buttons');
  const b = d.querySelector('button.dropdown-toggle'), r = b.getBoundingClientRect();
  return {x: r.x + r.width / 2, y: r.y + r.height / 2, button: vis(b),
          items: Array.from(d.querySelectorAll('a.dropdown-item'))
                      .map(a => ({href: a.href, title: a.getAttribute('title') || a.dataset.bsOriginalTitle,
                                  text: a.textContent.trim(), shown: vis(a)}))};
})()"""


def test_launch_buttons_on_a_page_that_is_not_a_notebook(site, browser, shots):
    """The API page of mlscale.parallel shows the rocket in its header; a click opens the
    dropdown with Binder and Colab, both opening notebook 09 (build_book.API_NOTEBOOKS)."""
    html, base = site
    v = browser.visit(base + "api/mlscale.parallel.html")
    assert v.js_errors == [] and v.failed_requests == []
    before = browser.evaluate(LAUNCH_JS)
    assert before["button"], "the launch button is not visible in the page header"
    assert [i["shown"] for i in before["items"]] == [False, False]   # a closed dropdown
    browser.click(before["x"], before["y"])
    after = browser.wait_for("(() => { const s = " + LAUNCH_JS + ";"
                             " return s.items.every(i => i.shown) ? s : null; })()", timeout=5)
    browser.screenshot(shots / "launch_buttons_api_mlscale.parallel.png")
    urls = build_book.launch_urls(f"notebooks/{build_book.API_NOTEBOOKS['mlscale.parallel']}.ipynb")
    assert [(i["text"], i["href"]) for i in after["items"]] == [("Binder", urls["Binder"]), ("Colab", urls["Colab"])]
    assert all("09_model_parallelism.ipynb" in i["title"] for i in after["items"])
    assert browser.report(base + "api/mlscale.parallel.html").js_errors == []


def test_search_finds_the_notebook(site, browser, shots):
    html, base = site
    v = browser.visit(base + "search.html?q=bubble")
    assert v.js_errors == [] and v.failed_requests == []
    hrefs = browser.wait_for("""(() => { const a = Array.from(document.querySelectorAll('ul.search li a'))
        .map(a => a.href); return a.length ? a : null; })()""", timeout=20)
    browser.screenshot(shots / "search_bubble.png")
    assert any("notebooks/09_model_parallelism.html" in h for h in hrefs), hrefs
