"""Sphinx configuration of the course as a website (``make book``; tools/build_book.py).

Sphinx + myst-nb + sphinx-book-theme: the stack Jupyter Book 1 is built from, used
directly. All three are pure-Python pip packages (Jupyter Book 2 needs Node.js for its
``mystmd`` engine); Sphinx brings autodoc, which turns the library's docstrings into the
API reference, and a client-side search index; myst-nb reads the notebooks with their
stored outputs (``nb_execution_mode = "off"``: the book never runs a notebook, ``make
test`` does); the book theme draws the Binder and Colab launch buttons of every notebook
page. tools/build_book.py stages the sources (README as ``index``, the notebooks, the
generated API pages) in the same layout as the repository, so relative links and the
launch buttons' notebook paths are those of the repository.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))            # autodoc imports this checkout's mlscale
sys.path.insert(0, str(ROOT / "tools"))

from build_book import REPOSITORY_BRANCH, repository_url  # noqa: E402

project = "mlscale"
author = "the mlscale authors"
copyright = "the mlscale authors, MIT licence"

extensions = [
    "myst_nb",               # .md (MyST) and .ipynb sources; registers myst_parser itself
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
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
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
}
