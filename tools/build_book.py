"""Build the course as a static website: ``make book`` (or ``python tools/build_book.py``).

    python tools/build_book.py                   # -> build/book/html/index.html
    python tools/build_book.py --out /tmp/book   # elsewhere (html/, doctrees/, src/ under it)
    python tools/build_book.py --stage-only      # write the Sphinx sources, build nothing
    python tools/build_book.py -v                # with Sphinx's progress and warnings

Sphinx + myst-nb + sphinx-book-theme (why: docs/book/conf.py). The notebooks are *not*
executed: the pages show the outputs stored in notebooks/*.ipynb (``make test`` checks them
with nbval). The sources are staged under ``<out>/src`` in the repository's own layout:

    src/index.md            README.md, with launch links under its title and the book's
                            table of contents appended (hidden)
    src/notebooks/*.ipynb   the course, one page each, with launch buttons (Binder, Colab)
    src/docs/*.md           docs/benchmarks.md and the other pages of docs/
    src/api/*.md            the API reference, one page per subpackage, from the docstrings

so the README's relative links, and the notebook paths in the Binder and Colab links, are
the repository's. Files are rewritten only when they change, so a second build is
incremental (Sphinx compares modification times).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "docs" / "book"
DEFAULT_OUT = ROOT / "build" / "book"
REPOSITORY_BRANCH = "main"
# where the launch buttons open the repository: docs/book/conf.py hands these to the theme
# (its buttons on notebook pages), launch_urls and page_launch_buttons build the same links
BINDERHUB_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"

# the API reference: one page per subpackage (its docstring, then each public submodule),
# the ones the course is about first, then every other public package or module of mlscale
API_FIRST = ["mlscale.comm", "mlscale.collectives", "mlscale.ops", "mlscale.nn", "mlscale.data",
             "mlscale.train", "mlscale.parallel", "mlscale.decentralized", "mlscale.federated",
             "mlscale.compress", "mlscale.serving", "mlscale.check", "mlscale.viz"]
API_SKIP = {"mlscale.cli"}   # the command line: `mlscale --help`

# the notebook that teaches each API page's package: the target of that page's launch
# buttons (tests/test_book.py checks that the notebook's code uses names the package
# defines); a page not listed here launches the course as a whole (see page_launch_buttons)
API_NOTEBOOKS = {
    "mlscale.comm": "02_collectives",             # launch, send/recv, NetworkModel
    "mlscale.collectives": "02_collectives",      # ring, tree, ... built on send/recv
    "mlscale.ops": "10_gpu_kernels",
    "mlscale.nn": "12_transformers_at_scale",     # GPT, attention, layer norms
    "mlscale.data": "03_data_parallel",           # partitioners and batching
    "mlscale.train": "03_data_parallel",          # the loop and its synchronizers
    "mlscale.parallel": "09_model_parallelism",
    "mlscale.decentralized": "06_decentralized",
    "mlscale.federated": "07_federated",
    "mlscale.compress": "08_compression",
    "mlscale.serving": "11_many_gpus_many_machines",
    "mlscale.check": "02_collectives",            # the first exercise and its checker
    "mlscale.viz": "02_collectives",              # the ring animation
    "mlscale.bench": "01_why_scale",              # fit_alpha_beta: the measured alpha-beta model
    "mlscale.bridge": "15_bridge_to_pytorch",
    "mlscale.bridge_tp": "15_bridge_to_pytorch",
    "mlscale.bridge_attention": "15_bridge_to_pytorch",
    "mlscale.bridge_sp": "15_bridge_to_pytorch",
    "mlscale.doctor": "00_welcome",
    "mlscale.meta": "14_planning_a_training_run",
    "mlscale.whatif": "14_planning_a_training_run",
}


def api_packages(root: pathlib.Path = ROOT) -> list[str]:
    """The pages of the API reference: API_FIRST, then the other public subpackages and
    modules found under mlscale/, sorted (a new one gets its page without an edit here)."""
    found = {f"mlscale.{p.stem}" for p in (root / "mlscale").glob("*.py") if not p.stem.startswith("_")}
    found |= {f"mlscale.{p.name}" for p in (root / "mlscale").iterdir()
              if (p / "__init__.py").exists() and not p.name.startswith("_")}
    found -= API_SKIP
    return [m for m in API_FIRST if m in found] + sorted(found - set(API_FIRST))


API_PACKAGES = api_packages()


class BookBuildError(RuntimeError):
    """The book could not be built: what is missing or which step failed, and the fix."""


def repository_url() -> str:
    """``[project.urls] Repository`` of pyproject.toml (the same URL the notebooks'
    set-up cell installs from: tools/setup_cell.py), the target of the launch buttons."""
    sys.path.insert(0, str(ROOT / "tools"))
    from setup_cell import project_url
    return project_url()


def notebooks(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The course notebooks, in order (``notebooks/NN_*.ipynb``)."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_mtime_ns != src.stat().st_mtime_ns \
            or dst.read_bytes() != src.read_bytes():
        shutil.copy2(src, dst)


def _submodules(package: str) -> list[str]:
    """Public submodules of ``package`` found on disk (no import): ``a/b.py`` and
    ``a/b/__init__.py``, names not starting with ``_``."""
    where = ROOT / package.replace(".", "/")
    if not where.is_dir():
        return []
    names = [p.stem for p in where.glob("*.py") if not p.stem.startswith("_")]
    names += [p.name for p in where.iterdir()
              if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_")]
    return [f"{package}.{n}" for n in sorted(names)]


def api_page(package: str) -> str:
    """MyST source of the API page of ``package``: autodoc of the package's docstring, then
    of each public submodule with its members (so nothing is documented twice); a plain
    module (``mlscale.serving``) is documented whole."""
    is_package = (ROOT / package.replace(".", "/") / "__init__.py").exists()
    lines = [f"# {package}", "", "```{eval-rst}", f".. automodule:: {package}"]
    lines += ["   :no-members:", "```", ""] if is_package else ["```", ""]
    for mod in _submodules(package):
        lines += [f"## {mod}", "", "```{eval-rst}", f".. automodule:: {mod}", "```", ""]
    return "\n".join(lines)


def launch_urls(notebook: str) -> dict[str, str]:
    """Binder and Colab URLs that open ``notebook`` (a path in the repository) of the
    repository's ``main``: the links sphinx-book-theme's launch buttons build
    (``<binderhub>/v2/gh/<owner>/<repo>/<branch>?urlpath=lab/tree/<path>`` and
    ``<colab>/github/<owner>/<repo>/blob/<branch>/<path>``). A folder for ``notebook``
    (``"notebooks"``) gives a Binder link to JupyterLab's file browser on that folder
    (Colab opens single notebooks only: its link is then of no use)."""
    owner, repo = urllib.parse.urlsplit(repository_url()).path.strip("/").split("/")[:2]
    return {
        "Binder": f"{BINDERHUB_URL}/v2/gh/{owner}/{repo}/{REPOSITORY_BRANCH}?urlpath=lab/tree/{notebook}",
        "Colab": f"{COLAB_URL}/github/{owner}/{repo}/blob/{REPOSITORY_BRANCH}/{notebook}",
    }


def page_launch_buttons(docname: str) -> dict[str, tuple[str, str]]:
    """The launch buttons of a page that is not a notebook (the theme draws those of the
    notebook pages): ``{"Binder": (url, tooltip), "Colab": (url, tooltip)}``.

    - an API page (``api/mlscale.ops``) whose package has a notebook in API_NOTEBOOKS:
      both open that notebook (``notebooks/10_gpu_kernels.ipynb``);
    - any other page (the landing page, the API index, docs/, search, index): Binder
      opens JupyterLab on the ``notebooks/`` folder, Colab the first notebook (Colab has
      no view of a folder).

    The tooltip says which, e.g. "Launch on Colab: notebooks/10_gpu_kernels.ipynb, the
    notebook of mlscale.ops"."""
    package = docname[len("api/"):] if docname.startswith("api/") else None
    if package in API_NOTEBOOKS:
        path = f"notebooks/{API_NOTEBOOKS[package]}.ipynb"
        urls = launch_urls(path)
        return {k: (u, f"Launch on {k}: {path}, the notebook of {package}") for k, u in urls.items()}
    first = f"notebooks/{notebooks()[0].name}"
    return {"Binder": (launch_urls("notebooks")["Binder"],
                       "Launch on Binder: JupyterLab on the course's notebooks/ folder"),
            "Colab": (launch_urls(first)["Colab"], f"Launch on Colab: {first}, the first notebook")}


def index_page(readme: str, nbs: list[pathlib.Path], docs: list[pathlib.Path]) -> str:
    """The landing page: the README as it is on the repository's front page, with a line
    under its title that launches the first notebook on Binder or Colab (in the text, where
    a first-time reader looks; the header's launch buttons are there too), and the
    book's table of contents appended (hidden: it becomes the sidebar)."""
    course = "\n".join(f"notebooks/{p.stem}" for p in nbs)
    more = "\n".join(["api/index"] + [f"docs/{p.stem}" for p in docs])
    urls = launch_urls(f"notebooks/{nbs[0].name}")
    launch = (f"*Run the course:* [on Binder]({urls['Binder']}) (CPU) ·"
              f" [on Colab]({urls['Colab']}) (one GPU) · or `make lab` on your machine.")
    lines = readme.rstrip().splitlines()
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
    lines[title + 1:title + 1] = ["", launch]
    return ("\n".join(lines) + "\n\n"
            "```{toctree}\n:hidden:\n:caption: The course\n\n" + course + "\n```\n\n"
            "```{toctree}\n:hidden:\n:caption: Reference\n\n" + more + "\n```\n")


def stage(src: pathlib.Path) -> pathlib.Path:
    """Write the Sphinx sources under ``src`` (see the module docstring); returns ``src``."""
    nbs = notebooks()
    if not nbs:
        raise BookBuildError(f"no notebooks found under {ROOT / 'notebooks'}: nothing to build")
    docs = sorted((ROOT / "docs").glob("*.md"))
    _write(src / "index.md", index_page((ROOT / "README.md").read_text(), nbs, docs))
    for p in nbs:
        _copy(p, src / "notebooks" / p.name)
    for p in docs:
        _copy(p, src / "docs" / p.name)
    api = ["# API reference", "",
           "Generated from the docstrings of this checkout's `mlscale` (Sphinx autodoc).", "",
           "```{toctree}", ":maxdepth: 1", ""] + API_PACKAGES + ["```", ""]
    _write(src / "api" / "index.md", "\n".join(api))
    for pkg in API_PACKAGES:
        _write(src / "api" / f"{pkg}.md", api_page(pkg))
    # pages left over from an earlier layout would still be built: remove them
    wanted = {src / "index.md", src / "api" / "index.md"}
    wanted |= {src / "notebooks" / p.name for p in nbs} | {src / "docs" / p.name for p in docs}
    wanted |= {src / "api" / f"{pkg}.md" for pkg in API_PACKAGES}
    for p in list(src.rglob("*.md")) + list(src.rglob("*.ipynb")):
        if p not in wanted:
            p.unlink()
    return src


def build(out: pathlib.Path = DEFAULT_OUT, jobs: str = "1", verbose: bool = False) -> pathlib.Path:
    """Stage the sources and run Sphinx (HTML builder); returns ``out/html``. Sphinx's
    warnings and errors go to ``out/sphinx.log`` (with ``verbose``, its progress and
    warnings to the terminal as well). Raises BookBuildError with the install hint where
    Sphinx, myst-nb or the theme is missing, or with Sphinx's exit status and last lines."""
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme") if importlib.util.find_spec(m) is None]
    if missing:
        raise BookBuildError(f"the book needs {', '.join(missing)}: pip install -e \".[book]\"")
    out = pathlib.Path(out).resolve()
    src = stage(out / "src")
    html = out / "html"
    log = out / "sphinx.log"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(CONF_DIR),
           "-d", str(out / "doctrees"), "-j", str(jobs), str(src), str(html)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    if verbose:
        rc = subprocess.call(cmd[:3] + ["-w", str(log)] + cmd[3:], env=env)
    else:   # -q: no progress; what Sphinx writes on stderr (warnings, a traceback) goes to the log
        with open(log, "w") as f:
            rc = subprocess.call(cmd[:3] + ["-q"] + cmd[3:], env=env, stdout=subprocess.DEVNULL, stderr=f)
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [line.strip() for line in lines if re.search(r"\w(Error|Exception)\b|ERROR", line)]
        raise BookBuildError(f"sphinx-build failed (exit status {rc}): "
                             + "\n  ".join(errors[-4:] or lines[-10:]) + f"\n(all of it: {log}; "
                             "python tools/build_book.py -v shows Sphinx's own output)")
    return html


_PROBLEM = re.compile(r"(?:^|: )(WARNING|ERROR|CRITICAL): ")


def problems(out: pathlib.Path = DEFAULT_OUT) -> list[str]:
    """Every problem of the book as last built into ``out``, each as its first line
    (``path:line: WARNING: message [type]``): what each page's reading logged, as
    tools/sphinx_problems.py keeps it across incremental builds (a page not read again
    keeps its problems), then what this build logged in ``out/sphinx.log`` besides (the
    writing of the pages it wrote: a broken cross-reference, say)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from sphinx_problems import read_problems
    out = pathlib.Path(out).resolve()
    kept = [p.splitlines()[0] for lines in read_problems(out / "doctrees").values() for p in lines]
    log = out / "sphinx.log"
    logged = [line.strip() for line in log.read_text(errors="replace").splitlines()
              if _PROBLEM.search(line.strip())] if log.exists() else []
    return kept + [line for line in logged if line not in kept]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                    help="build folder (default build/book): html/, doctrees/, src/")
    ap.add_argument("-j", "--jobs", default="1",
                    help="Sphinx worker processes (default 1: on 2 cores, 'auto' took twice as long)")
    ap.add_argument("--stage-only", action="store_true", help="write the sources only")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="Sphinx's progress output and warnings (by default they go to <out>/sphinx.log only)")
    args = ap.parse_args(argv)
    if args.stage_only:
        print(stage(pathlib.Path(args.out).resolve() / "src"))
        return 0
    t0 = time.perf_counter()
    try:
        html = build(args.out, jobs=args.jobs, verbose=args.verbose)
    except BookBuildError as e:
        raise SystemExit(f"make book: {e}") from None
    found = problems(args.out)
    print(f"book built in {time.perf_counter() - t0:.1f} s: {html / 'index.html'}")
    if found:
        print(f"  {len(found)} problems (warnings or errors; tests/test_book.py wants none):")
        for line in found:
            print("    " + line)
        print(f"  (in full: {pathlib.Path(args.out).resolve() / 'doctrees' / 'problems.json'},"
              f" and {pathlib.Path(args.out).resolve() / 'sphinx.log'} for this build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
