"""The set-up cell: the first code cell of every course notebook, written from here alone.

    python tools/setup_cell.py            # print the cell
    python tools/setup_cell.py --sync     # write it into every notebook (outputs and ids kept)
    python tools/setup_cell.py --check    # exit 1 and name the notebooks whose first code cell differs

Where Colab installs mlscale from is defined once: ``[project.urls] Repository`` in
pyproject.toml (the cell installs ``mlscale[colab] @ git+<that URL>``). A learner or an
instructor installs from elsewhere (a fork, a branch, a wheel, a checkout) without editing
any notebook by setting ``MLSCALE_INSTALL`` before running the cell, e.g. in a Colab cell
``%env MLSCALE_INSTALL=git+https://github.com/you/mlscale@my-branch`` or
``%env MLSCALE_INSTALL=/content/mlscale-0.1.0-py3-none-any.whl``.
After changing the URL or the text below, run ``--sync`` (tests/test_notebook_setup.py fails
until every notebook carries the cell). The cell cannot import mlscale to learn the URL: on
Colab mlscale is what it installs.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PYPROJECT = ROOT / "pyproject.toml"
ENV_VAR = "MLSCALE_INSTALL"
EXTRA = "colab"   # the pyproject extra holding what Colab lacks

TEMPLATE = '''\
# Set-up: installs only what this platform lacks, and is a no-op everywhere else.
# Colab: mlscale with MPI and numba-cuda (Colab brings Jupyter, CuPy and its GPU).
# To install another version (a fork, a branch, a wheel or a checkout), set {env} first,
# e.g. `%env {env}=git+https://github.com/you/mlscale@my-branch`.
# Binder: binder/ preinstalled everything. Your machine: `make lab` did.
# (Written by tools/setup_cell.py: edit it there, then run `python tools/setup_cell.py --sync`.)
import os
import sys

if "google.colab" in sys.modules:
    import pathlib
    import subprocess
    where = os.environ.get("{env}", "git+{url}")
    if os.path.exists(where):   # a wheel or a directory on this machine
        where = pathlib.Path(where).resolve().as_uri()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"mlscale[{extra}] @ {{where}}"], check=True)'''


def project_url(pyproject: pathlib.Path = PYPROJECT) -> str:
    """``[project.urls] Repository`` of pyproject.toml: where mlscale's source lives."""
    text = pyproject.read_text()
    try:
        import tomllib
    except ImportError:   # Python 3.10: read the one line
        m = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text, re.M | re.S)
        urls = {"Repository": m.group(1)} if m else {}
    else:
        urls = tomllib.loads(text).get("project", {}).get("urls", {})
    if "Repository" not in urls:
        raise SystemExit(f"{pyproject}: no [project.urls] Repository = \"https://...\"; "
                         "add the URL Colab should install mlscale from")
    return urls["Repository"]


def cell_source(url: str | None = None) -> str:
    """The text of the set-up cell."""
    return TEMPLATE.format(env=ENV_VAR, url=url or project_url(), extra=EXTRA)


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and "google.colab" in cell.source


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def notebooks(folder: pathlib.Path = NOTEBOOKS):
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def sync(paths, source: str) -> list:
    """Write ``source`` as the first code cell of each notebook: replace a set-up cell in
    place (its id, metadata and outputs kept), or insert one before the first code cell of a
    notebook that has none. Returns the notebooks changed."""
    import nbformat

    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        first = first_code_cell(nb)
        if first is not None and is_setup_cell(first):
            if first.source == source:
                continue
            first.source = source
        else:
            cell = nbformat.v4.new_code_cell(source)
            at = nb.cells.index(first) if first is not None else len(nb.cells)
            nb.cells.insert(at, cell)
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def stale(paths, source: str) -> list:
    """The notebooks whose first code cell is not ``source``."""
    import nbformat

    out = []
    for path in paths:
        first = first_code_cell(nbformat.read(path, as_version=4))
        if first is None or first.source != source:
            out.append(path)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sync", action="store_true", help="write the cell into every notebook")
    ap.add_argument("--check", action="store_true", help="exit 1 if a notebook's first code cell differs")
    args = ap.parse_args(argv)
    source = cell_source()
    if args.sync:
        for p in sync(notebooks(), source):
            print(f"wrote the set-up cell into {p.relative_to(ROOT)}")
        return 0
    if args.check:
        bad = stale(notebooks(), source)
        for p in bad:
            print(f"{p.relative_to(ROOT)}: first code cell is not the set-up cell; "
                  f"run python tools/setup_cell.py --sync", file=sys.stderr)
        return 1 if bad else 0
    print(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
