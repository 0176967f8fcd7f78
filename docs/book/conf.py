"""Sphinx configuration of the course as a website (``make book``; tools/build_book.py).

Sphinx + myst-nb + sphinx-book-theme: the stack Jupyter Book 1 is built from, used
directly. All three are pure-Python pip packages (Jupyter Book 2 needs Node.js for its
``mystmd`` engine); Sphinx brings autodoc, which turns the library's docstrings into the
API reference, and a client-side search index; myst-nb reads the notebooks with their
stored outputs (``nb_execution_mode = "off"``: the book never runs a notebook, ``make
test`` does); the book theme draws the Binder and Colab launch buttons of every notebook
page (and _launch_buttons_everywhere below the same dropdown on every other page).
tools/build_book.py stages the sources (README as ``index``, the notebooks, the
generated API pages) in the same layout as the repository, so relative links and the
launch buttons' notebook paths are those of the repository.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))            # autodoc imports this checkout's mlscale
sys.path.insert(0, str(ROOT / "tools"))

import hashlib  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402

from docutils import nodes  # noqa: E402

from build_book import (BINDERHUB_URL, COLAB_URL, REPOSITORY_BRANCH,  # noqa: E402
                        page_launch_buttons, repository_url)

project = "mlscale"
author = "the mlscale authors"
copyright = "the mlscale authors, MIT licence"

extensions = [
    "myst_nb",               # .md (MyST) and .ipynb sources; registers myst_parser itself
    "sphinx.ext.autodoc",
    "sphinx.ext.linkcode",   # "[source]" of every documented object: the file on the repository
    "sphinx_problems",       # tools/sphinx_problems.py: every page's warnings, kept across builds
]
# the docstring hooks below shape every API page, but Sphinx does not see a change of
# this file's functions (only of its settings): this digest of the hooks' sources is a
# setting (registered in setup), so an edit of them makes Sphinx read every page again
book_hooks_digest = hashlib.sha256(pathlib.Path(__file__).read_bytes()
                                   + (ROOT / "tools" / "sphinx_problems.py").read_bytes()).hexdigest()
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# the notebooks are executed by tools/execute_notebooks.py and checked by nbval; the book
# shows the stored outputs as they are
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "misc.highlighting_failure"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
add_module_names = False     # "ring(comm, x, op)" under its module's heading, not the full path

html_theme = "sphinx_book_theme"
html_title = "mlscale: distributed machine learning you can run"
html_static_path: list[str] = []
html_theme_options = {
    "repository_url": repository_url(),
    "repository_branch": REPOSITORY_BRANCH,
    "path_to_docs": "",                  # the staged sources mirror the repository
    "use_repository_button": True,
    "use_download_button": True,
    "launch_buttons": {
        "binderhub_url": BINDERHUB_URL,
        "colab_url": COLAB_URL,
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
}
# light or dark as the reader's system says (without it the theme logs an error on a first visit)
html_context = {"default_mode": "auto"}


def linkcode_resolve(domain, info):
    """The repository URL of a documented object's source lines (sphinx.ext.linkcode),
    e.g. ``.../blob/main/mlscale/collectives/allreduce.py#L40-L75``; None where there is
    no Python source to point at (data, builtins, objects made at run time)."""
    if domain != "py" or not info.get("module"):
        return None
    try:
        obj = importlib.import_module(info["module"])
        for part in info["fullname"].split("."):
            obj = getattr(obj, part)
        obj = inspect.unwrap(obj)
        path = pathlib.Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
        lines, start = inspect.getsourcelines(obj)
    except Exception:
        return None
    return (f"{repository_url()}/blob/{REPOSITORY_BRANCH}/{path.as_posix()}"
            f"#L{start}-L{start + len(lines) - 1}")


def _unlink_problematic(app, doctree, docname):
    """A docstring that is not valid reST (``|x|`` read as a substitution, say) leaves a
    "problematic" node linking to an error message Sphinx does not print: a broken
    ``#id1`` link on the page. Keep its text, drop the link; the warning itself stays in
    Sphinx's output (sphinx.log) so the docstring can be fixed."""
    for node in list(doctree.findall(nodes.problematic)):
        node.replace_self(nodes.inline("", node.astext(), ids=list(node["ids"])))


_LITERAL = re.compile(r"(``.*?``)")


def _escape_bars(app, what, name, obj, options, lines):
    """The docstrings write absolute values and norms as ``|x|``, which reST reads as a
    substitution reference (an error and a broken link): escape the bars, outside inline
    literals and indented code."""
    for i, line in enumerate(lines):
        if "|" not in line or line.startswith((" ", "\t")):
            continue
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if p.startswith("``") else p.replace("|", "\\|") for p in parts)


def _indent(line):
    return len(line) - len(line.lstrip())


# the first line of an indented example: Python, or a command line (mlscale bench ..., torchrun ...)
_CODE = re.compile(r"\s+(>>>|from |import |for |def |return |print\(|[\w.\[\], ]+\s*=[^=]|[\w.]+\(.*\)\s*(#|$)"
                   r"|(mlscale|python|pip|torchrun|mpiexec|mpirun) [-\w]|PYTHONPATH=|\$ )")


_ITEM = re.compile(r"\s*(\d+\.|[-*])\s+")
_BORDER = re.compile(r"\s*=+( +=+)+\s*$")


def _blocks(app, what, name, obj, options, lines):
    """The docstrings are laid out as plain text: an indented example right under a line
    of prose, a list whose items run on without blank lines. reST wants a blank line
    around every indented block: add them, and make a block after a line ending in ":"
    a literal (code) block, as it almost always is one. A simple table (``=====  ===``
    borders) is reST already, where a row's continuation lines are indented on purpose:
    it is passed through as it is."""
    out, prev, table = [], "", False
    for i, line in enumerate(lines):
        if _BORDER.match(line) or table:   # a table: from its first border to its last
            if _BORDER.match(line):
                after = lines[i + 1] if i + 1 < len(lines) else ""
                table = not table or bool(after.strip())   # the last border: a blank line after
            out.append(line)
            prev = line
            continue
        if line.strip() and not prev.strip() and _indent(line) > 0 and _CODE.match(line):
            last = next((x for x in reversed(out) if x.strip()), "")
            if _indent(last) < _indent(line) and not last.rstrip().endswith("::"):
                m = _ITEM.match(last)  # inside a list item: the "::" goes at the item's text
                pad = len(m.group(0)) if m else _indent(last)
                out[len(out) - 1:len(out) - 1] = [" " * pad + "::"] if out else []  # a code block: literal
        if line.strip() and prev.strip():
            a, b = _indent(prev), _indent(line)
            # a list item's continuation lines are indented under its text: not a block
            item = _ITEM.match(prev)
            if b > a and not prev.rstrip().endswith("::") and not (item and b <= len(item.group(0))):
                if prev.rstrip().endswith(":"):
                    out[-1] = prev.rstrip() + ":"
                out.append("")
            elif b < a:
                out.append("")
        out.append(line)
        prev = line
    lines[:] = out


LAUNCH_ICONS = {"Binder": "_static/images/logo_binder.svg", "Colab": "_static/images/logo_colab.png"}


def _launch_buttons_everywhere(app, pagename, templatename, context, doctree):
    """sphinx-book-theme puts its launch dropdown (the rocket: Binder, Colab) on notebook
    pages only; give every other page (the landing page, the API reference, docs/,
    search, the index) the same dropdown, in the same place (the first header button),
    as the same button dicts the theme's template renders, to the targets of
    build_book.page_launch_buttons (an API page: the notebook of its package)."""
    buttons = context.get("header_buttons")
    if buttons is None or any(b.get("label") == "launch-buttons" for b in buttons):
        return          # not a book-theme page, or a notebook page: the theme's own buttons
    from sphinx.locale import get_translation
    _ = get_translation("booktheme")
    links = [{"type": "link", "text": name, "tooltip": tooltip, "icon": LAUNCH_ICONS[name], "url": url}
             for name, (url, tooltip) in page_launch_buttons(pagename).items()]
    buttons.insert(0, {"type": "group", "tooltip": _("Launch interactive content"),
                       "icon": "fas fa-rocket", "buttons": links, "label": "launch-buttons"})


def setup(app):
    app.add_config_value("book_hooks_digest", "", "env")
    # after the theme's own header buttons (priority 501), before the page is rendered
    app.connect("html-page-context", _launch_buttons_everywhere, priority=502)
    app.connect("doctree-resolved", _unlink_problematic)
    app.connect("autodoc-process-docstring", _escape_bars)
    app.connect("autodoc-process-docstring", _blocks)
