"""The course as a website (``make book``: tools/build_book.py, docs/book/conf.py), checked
without a browser: the HTML Sphinx wrote, parsed with the standard library.

    PYTHONPATH=$PWD python -m pytest -q tests/test_book.py

The book is built once per session into build/book (incremental: seconds when nothing
changed; about 30 s from scratch on 2 cores), or into $MLSCALE_BOOK_OUT. Skips, saying
what to install, without Sphinx, myst-nb or sphinx-book-theme (``pip install -e ".[book]"``).
The browser's view of the same site: tests/test_book_browser.py.
"""
from __future__ import annotations

import json
import pathlib
import re
import sys
import urllib.parse

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _book  # noqa: E402
from _book import ROOT, Page, build_book  # noqa: E402

if _book.missing_deps():
    pytest.skip(f"the book needs {', '.join(_book.missing_deps())}: pip install -e \".[book]\"",
                allow_module_level=True)

NOTEBOOKS = build_book.notebooks()


@pytest.fixture(scope="module")
def site() -> pathlib.Path:
    return _book.built_html()


def page(site, rel) -> Page:
    f = site / rel
    assert f.is_file(), f"{rel} is not in the built site {site}"
    return Page(f.read_text())


def test_the_notebooks_are_the_course():
    """notebooks/NN_*.ipynb, in the order of their numbers (a number may be missing)."""
    assert len(NOTEBOOKS) >= 14 and NOTEBOOKS[0].name == "00_welcome.ipynb"
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_its_page_with_its_figures(site, nb):
    p = page(site, f"notebooks/{nb.stem}.html")
    assert set(p.headings["h1"]) == {_book.notebook_title(nb)}
    # every image output of the stored notebook is an <img> of a file Sphinx wrote
    figures = [s for s in p.output_images if s.startswith("../_images/")]
    assert len(figures) == _book.notebook_image_outputs(nb), (nb.name, figures)
    assert len(set(figures)) == len(figures)
    for src in figures:
        f = (site / "notebooks" / src).resolve()
        assert f.is_file() and f.stat().st_size > 1000, src
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src


def test_the_book_does_not_execute_the_notebooks(site):
    """The pages show the stored outputs, not new ones: the progress bars' widget model ids
    (random, new at every run) on the pages are those stored in the notebooks, and so is
    the last line each notebook printed."""
    import html
    checked = 0
    for nb_path in NOTEBOOKS:
        nb = json.loads(nb_path.read_text())
        text = (site / f"notebooks/{nb_path.stem}.html").read_text()
        ids = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
               for c in nb["cells"] for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        for model_id in ids:
            assert model_id in text, (nb_path.name, model_id)
        stored = [line.strip() for c in nb["cells"] for o in c.get("outputs", [])
                  if o.get("output_type") == "stream"
                  for line in "".join(o["text"]).splitlines() if line.strip()]
        assert stored and html.escape(stored[-1], quote=False) in text, nb_path.name
        checked += len(ids)
    assert checked >= 10


def test_the_ring_animation_is_on_the_collectives_page(site):
    """Notebook 02 stores the ring all-reduce as a matplotlib JS animation (text/html);
    the page carries it whole: its frames and its player."""
    nb = json.loads((ROOT / "notebooks/02_collectives.ipynb").read_text())
    anims = [("".join(o["data"]["text/html"])) for c in nb["cells"] for o in c.get("outputs", [])
             if "text/html" in o.get("data", {}) and "new Animation(" in "".join(o["data"]["text/html"])]
    assert len(anims) == 1
    img_id = re.search(r'id="(_anim_img\w+)"', anims[0]).group(1)
    nframes = anims[0].count("frames[")
    text = (site / "notebooks/02_collectives.html").read_text()
    assert f'id="{img_id}"' in text and text.count("frames[") == nframes > 10


def test_the_readme_is_the_landing_page(site):
    p = page(site, "index.html")
    readme = (ROOT / "README.md").read_text()
    assert set(p.headings["h1"]) == {re.search(r"^# (.+)$", readme, re.M).group(1)}
    sections = re.findall(r"^## (.+)$", readme, re.M)
    shown = [h.replace("\u2019", "'") for h in p.headings["h2"] if h != "Contents"]  # smartquotes
    assert sections and shown == [re.sub(r"[`*]", "", s).strip() for s in sections]
    # the sidebar lists the course, in order, from the landing page
    hrefs = [a["href"] for a in p.anchors if a.get("href", "").startswith("notebooks/")]
    firsts = list(dict.fromkeys(urllib.parse.urlsplit(h).path for h in hrefs))
    assert firsts == [f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS]


def test_every_internal_link_resolves(site):
    pages = _book.site_pages(site)
    assert len(pages) >= len(NOTEBOOKS) + len(build_book.API_PACKAGES) + 3
    assert _book.broken_links(site) == []


def test_the_link_checker_finds_broken_links(tmp_path):
    """The checker above can fail: a missing page, a missing anchor, a missing image."""
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<p id="top"><a href="a/b.html#here">ok</a> <a href="a/b.html#gone">no anchor</a>'
        ' <a href="missing.html">no page</a> <img src="_images/x.png">'
        ' <a href="https://example.org/x.html">external</a> <a href="#top">self</a>'
        ' <a href="#">button</a></p>')
    (tmp_path / "a" / "b.html").write_text('<h2 id="here">b</h2><a href="../index.html#top">up</a>')
    bad = _book.broken_links(tmp_path)
    assert len(bad) == 3, bad
    assert any("no id 'gone'" in b for b in bad)
    assert any("missing.html does not exist" in b for b in bad)
    assert any("_images/x.png does not exist" in b for b in bad)


def test_the_api_reference_covers_the_library():
    assert build_book.API_PACKAGES[:3] == ["mlscale.comm", "mlscale.collectives", "mlscale.ops"]
    for name in ("mlscale.parallel", "mlscale.train", "mlscale.nn", "mlscale.doctor", "mlscale.bench"):
        assert name in build_book.API_PACKAGES
    assert "mlscale.cli" not in build_book.API_PACKAGES
    assert len(set(build_book.API_PACKAGES)) == len(build_book.API_PACKAGES)


@pytest.mark.parametrize("package", build_book.API_PACKAGES)
def test_the_api_reference_has_a_page_per_package(site, package):
    p = page(site, f"api/{package}.html")
    assert set(p.headings["h1"]) == {package}
    documented = {i for i in p.ids if i.startswith(package + ".")}
    assert documented, f"{package}: no object documented"


def test_the_api_reference_documents_the_main_objects(site):
    """Objects the course uses, each documented from its docstring, with a link to its
    source lines on the repository."""
    for package, name in [
        ("mlscale.comm", "mlscale.comm.launch.launch"),
        ("mlscale.comm", "mlscale.comm.base.Communicator.all_reduce"),
        ("mlscale.collectives", "mlscale.collectives.allreduce.ring"),
        ("mlscale.parallel", "mlscale.parallel.fsdp.FSDP"),
        ("mlscale.nn", "mlscale.nn.transformer.GPT"),
    ]:
        text = (site / f"api/{package}.html").read_text()
        assert f'id="{name}"' in text, name
    import inspect
    import mlscale.collectives.allreduce as ar
    first = ar.ring.__doc__.strip().split()[0]
    section = (site / "api/mlscale.collectives.html").read_text().split('id="mlscale.collectives.allreduce.ring"')[1]
    assert first in section[:4000]
    line = inspect.getsourcelines(ar.ring)[1]
    assert f"mlscale/collectives/allreduce.py#L{line}-" in section[:4000]


def test_search_index_covers_every_page(site):
    text = (site / "searchindex.js").read_text()
    assert text.startswith("Search.setIndex(")
    index = json.loads(text[len("Search.setIndex("):].rstrip().rstrip(";").rstrip(")"))
    docnames = index["docnames"]
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in docnames
    assert "index" in docnames and all(f"api/{p}" in docnames for p in build_book.API_PACKAGES)
    # a word finds the notebook that teaches it (Sphinx stores stemmed terms: "bubbl")
    bubble = index["terms"]["bubbl"]
    bubble = [bubble] if isinstance(bubble, int) else bubble
    assert docnames.index("notebooks/09_model_parallelism") in bubble
    assert (site / "search.html").is_file()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_launch_buttons_open_this_notebook(site, nb):
    """The theme's Binder and Colab buttons on each notebook page open that notebook of
    the repository named in pyproject.toml (the file exists at that path here)."""
    url = build_book.repository_url()
    owner, repo = urllib.parse.urlsplit(url).path.strip("/").split("/")[:2]
    path = f"notebooks/{nb.name}"
    assert (ROOT / path).is_file() and (ROOT / "binder").is_dir()
    buttons = {a.get("title"): a["href"] for a in page(site, f"notebooks/{nb.stem}.html").anchors
               if (a.get("title") or "").startswith("Launch on")}
    assert buttons == {f"Launch on {k}": v for k, v in build_book.launch_urls(path).items()}
    assert buttons == {
        "Launch on Binder": f"https://mybinder.org/v2/gh/{owner}/{repo}/{build_book.REPOSITORY_BRANCH}"
                            f"?urlpath=lab/tree/{path}",
        "Launch on Colab": f"https://colab.research.google.com/github/{owner}/{repo}/blob/"
                           f"{build_book.REPOSITORY_BRANCH}/{path}",
    }


def _launch_dropdown(text: str) -> dict[str, str]:
    """The launch buttons of a page: {tooltip: href} of the items of its rocket dropdown."""
    assert text.count('class="dropdown dropdown-launch-buttons"') == 1, "no launch dropdown, or two"
    menu = text.split('class="dropdown dropdown-launch-buttons"')[1].split("</ul>")[0]
    return {a["title"]: a["href"] for a in Page(menu).anchors}


def test_every_page_has_launch_buttons(site):
    """Every page of the site (not only the notebooks) has the theme's rocket dropdown
    with a Binder and a Colab button: on a notebook page they open that notebook, on an
    API page the notebook of its package (build_book.API_NOTEBOOKS), on every other page
    (landing page, API index, docs/, search, index) Binder opens JupyterLab on the
    notebooks/ folder and Colab the first notebook; each tooltip says which."""
    owner, repo = urllib.parse.urlsplit(build_book.repository_url()).path.strip("/").split("/")[:2]
    branch = build_book.REPOSITORY_BRANCH
    binder = f"https://mybinder.org/v2/gh/{owner}/{repo}/{branch}?urlpath=lab/tree/"
    colab = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/"
    pages = _book.site_pages(site)
    assert len(pages) >= len(NOTEBOOKS) + len(build_book.API_PACKAGES) + 5
    kinds = {"notebook": 0, "api": 0, "other": 0}
    for rel, f in pages.items():
        buttons = _launch_dropdown(f.read_text())
        if rel.startswith("notebooks/"):
            path = f"notebooks/{pathlib.Path(rel).stem}.ipynb"
            expected = {"Launch on Binder": binder + path, "Launch on Colab": colab + path}
            kinds["notebook"] += 1
        elif rel.startswith("api/mlscale."):
            package = rel[len("api/"):-len(".html")]
            path = f"notebooks/{build_book.API_NOTEBOOKS[package]}.ipynb"
            expected = {f"Launch on Binder: {path}, the notebook of {package}": binder + path,
                        f"Launch on Colab: {path}, the notebook of {package}": colab + path}
            kinds["api"] += 1
        else:
            first = f"notebooks/{NOTEBOOKS[0].name}"
            expected = {"Launch on Binder: JupyterLab on the course's notebooks/ folder": binder + "notebooks",
                        f"Launch on Colab: {first}, the first notebook": colab + first}
            kinds["other"] += 1
        assert buttons == expected, rel
        assert (ROOT / expected[next(iter(expected))].split("lab/tree/")[1]).exists(), rel
    assert kinds == {"notebook": len(NOTEBOOKS), "api": len(build_book.API_PACKAGES),
                     "other": len(pages) - len(NOTEBOOKS) - len(build_book.API_PACKAGES)}
    assert {"index.html", "api/index.html", "search.html", "genindex.html"} <= set(pages)


def test_each_api_page_launches_the_notebook_of_its_package():
    """API_NOTEBOOKS maps every API page to a notebook that exists and whose code uses at
    least one class or function the package defines (so the mapping cannot drift into
    nonsense: mlscale.ops -> 10_gpu_kernels, which calls its kernels)."""
    import importlib
    import inspect
    import pkgutil
    assert set(build_book.API_NOTEBOOKS) == set(build_book.API_PACKAGES), \
        "every API page needs its notebook in tools/build_book.py API_NOTEBOOKS"
    for package, stem in build_book.API_NOTEBOOKS.items():
        nb = ROOT / "notebooks" / f"{stem}.ipynb"
        assert nb in NOTEBOOKS, (package, stem)
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                         if c["cell_type"] == "code")
        top = importlib.import_module(package)
        mods = [top] + [importlib.import_module(f"{package}.{m.name}")
                        for m in pkgutil.iter_modules(getattr(top, "__path__", []))]
        names = {k for m in mods for k, v in vars(m).items()
                 if (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == m.__name__
                 and not k.startswith("_") and len(k) >= 4}
        used = {n for n in names if re.search(rf"\b{n}\b", code)}
        assert used, f"{stem}.ipynb uses nothing {package} defines"


def test_the_landing_page_launches_the_course(site):
    hrefs = [a.get("href") for a in page(site, "index.html").anchors]
    for url in build_book.launch_urls(f"notebooks/{NOTEBOOKS[0].name}").values():
        assert url in hrefs


def test_staged_sources_mirror_the_repository(site):
    """The Sphinx sources are the repository's files, copied: the README (plus the hidden
    table of contents) is index.md, the notebooks are byte for byte the stored ones."""
    src = site.parent / "src"
    index = (src / "index.md").read_text().splitlines()
    readme = (ROOT / "README.md").read_text().rstrip().splitlines()
    assert index[0] == readme[0] == "# mlscale" and index[1] == "" and index[2].startswith("*Run the course:*")
    assert index[3:3 + len(readme) - 1] == readme[1:]
    for nb in NOTEBOOKS:
        assert (src / "notebooks" / nb.name).read_bytes() == nb.read_bytes()
    assert sorted(p.name for p in (src / "notebooks").glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


def test_the_build_has_no_problems(site):
    """No warning or error in the whole book: the docstrings are valid reST (no malformed
    table, no unclosed inline mark, no |x| read as a substitution), every page reads
    cleanly. build_book.problems counts every page, not only those this (incremental)
    build read again: tools/sphinx_problems.py keeps each page's problems until it is
    read again. No allow-list: a new problem is fixed at its source."""
    found = build_book.problems(site.parent)
    assert found == [], "\n".join(found)


MINI_CONF = """
import sys
sys.path[:0] = [{tools!r}, {here!r}]
extensions = ["sphinx.ext.autodoc", "sphinx_problems"]
suppress_warnings = ["ref.python"]
"""


def test_the_problem_record_outlives_an_incremental_build(tmp_path):
    """On a tiny Sphinx project: a docstring that is not valid reST is reported by the
    build that reads it and, unlike Sphinx's own output, by the next build too (which
    reads nothing again); fixed, it is gone. A suppressed kind of warning is not kept."""
    import os
    import subprocess
    from sphinx_problems import read_problems
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "conf.py").write_text(
        MINI_CONF.format(tools=str(ROOT / "tools"), here=str(tmp_path)))
    (tmp_path / "src" / "index.rst").write_text("Mini\n====\n\n.. toctree::\n\n   other\n\n"
                                            ".. automodule:: mini_mod\n   :members:\n")
    (tmp_path / "src" / "other.rst").write_text("Other\n=====\n\nFine text.\n")
    mod = tmp_path / "mini_mod.py"

    def build():
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "dummy", "-q", "-d", str(tmp_path / "dt"),
                            str(tmp_path / "src"), str(tmp_path / "out")],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stderr, read_problems(tmp_path / "dt")

    mod.write_text('"""Mini."""\n\ndef f():\n    """The norm |x| of x."""\n')
    log, record = build()
    assert 'Undefined substitution referenced: "x"' in log
    assert list(record) == ["index"] and len(record["index"]) == 1
    assert "mini_mod.py:docstring of mini_mod.f:1: ERROR: Undefined substitution" in record["index"][0]
    log, again = build()                    # nothing changed: Sphinx reads nothing, prints nothing
    assert "Undefined substitution" not in log
    assert again == record
    mod.write_text('"""Mini."""\n\ndef f():\n    """The norm ``|x|`` of x, fixed."""\n')
    log, fixed = build()                    # autodoc's dependency on the module: index read again
    assert log.strip() == "" and fixed == {}


def _api(site, package):
    return (site / f"api/{package}.html").read_text()


def test_docstring_tables_lists_and_commands_render_as_such(site):
    """What the reST fixes are for: hand-drawn tables are tables (a cell of several lines
    is one cell), numbered lists are lists, command lines are literal blocks (``--quick``,
    not an en dash)."""
    tables = lambda text, key: [t for t in re.findall(r"<table.*?</table>", text, re.S) if key in t]
    (train,) = tables(_api(site, "mlscale.train"), "CompressedDataParallel")
    assert train.count("<tr") == 6          # header + 5 synchronizers
    (seq,) = tables(_api(site, "mlscale.parallel"), "ReduceScatterToSP")
    assert seq.count("<tr") == 5 and "<p>ReduceScatterToSP (g-bar)</p>" in seq
    assert "reduce-scatter along the sequence (after a row-parallel layer: sum the partial outputs," \
        " keep my tokens)" in " ".join(seq.split())
    (zero,) = tables(_api(site, "mlscale.parallel"), "P_os+g")
    assert zero.count("<tr") == 5
    (ops,) = tables(_api(site, "mlscale.ops"), "qsgd_quantize, levels")
    assert ops.count("<tr") == 4
    bench = _api(site, "mlscale.bench")
    i = bench.index("how far the sim engine scales")
    ol = bench[i:].split('<ol class="arabic')[1].split("</ol>")[0]
    assert ol.count("<li>") == 4
    blocks = [re.sub(r"<[^>]+>", "", b) for b in re.findall(r"<pre>(.*?)</pre>", bench, re.S)]
    assert any(re.search(r"^mlscale bench sim --quick +# smaller world sizes", b, re.M) for b in blocks)
    assert "–quick" not in bench             # no "--" turned into an en dash
