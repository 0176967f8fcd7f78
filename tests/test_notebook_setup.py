"""The notebooks' set-up cell (tools/setup_cell.py): one text in every notebook, and its
install line works.

On Colab the cell runs ``pip install "mlscale[colab] @ <where>"``; here it is run with
``google.colab`` faked in ``sys.modules`` and ``MLSCALE_INSTALL`` pointing at this checkout,
and the pip command it builds is handed to the real pip (``--dry-run --no-index``: pip builds
mlscale's metadata from the checkout and resolves every dependency of the extra against what
is installed, with no network and without touching this environment). A second test installs
what the same requirement builds into a temporary folder and imports it from there.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import setup_cell  # noqa: E402

nbformat = pytest.importorskip("nbformat")
NOTEBOOKS = setup_cell.notebooks()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 12, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_set_up_cell(path):
    first = setup_cell.first_code_cell(nbformat.read(path, as_version=4))
    assert first is not None and first.source == setup_cell.cell_source(), (
        f"{path.name}: its first code cell is not the set-up cell of tools/setup_cell.py; "
        f"run `python tools/setup_cell.py --sync` (edit the cell in tools/setup_cell.py, not in a notebook)")


def test_the_url_is_defined_once_in_pyproject():
    url = setup_cell.project_url()
    assert url.startswith("https://"), url
    text = setup_cell.cell_source()
    assert text.count(url) == 1 and f'"git+{url}"' in text
    assert setup_cell.cell_source("https://example.org/fork") != text   # the URL is not baked in elsewhere
    for path in NOTEBOOKS:   # no notebook's code names another install source
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert "pip\", \"install" not in cell.source or cell.source == text, path.name


def test_the_extra_the_cell_installs_exists():
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert setup_cell.EXTRA in extras
    names = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower() for r in extras[setup_cell.EXTRA]}
    assert {"mpi4py", "mpich", "numba-cuda"} <= names   # MPI sections and notebook 10's kernels


def run_cell(monkeypatch, env_value, on_colab=True):
    """Execute the set-up cell as a notebook would, capturing its subprocess.run calls."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append((list(argv), kw)))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if env_value is None:
        monkeypatch.delenv(setup_cell.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(setup_cell.ENV_VAR, env_value)
    exec(compile(setup_cell.cell_source(), "<set-up cell>", "exec"), {})
    return calls


def test_off_colab_the_cell_installs_nothing(monkeypatch):
    assert run_cell(monkeypatch, None, on_colab=False) == []
    assert run_cell(monkeypatch, str(ROOT), on_colab=False) == []


def test_on_colab_the_default_is_the_project_repository(monkeypatch):
    calls = run_cell(monkeypatch, None)
    assert len(calls) == 1
    argv, kw = calls[0]
    assert argv == [sys.executable, "-m", "pip", "install", "-q",
                    f"mlscale[{setup_cell.EXTRA}] @ git+{setup_cell.project_url()}"]
    assert kw == {"check": True}   # a failed install stops the notebook


def test_mlscale_install_overrides_with_a_url_or_a_path(monkeypatch, tmp_path):
    url = "git+https://example.org/you/mlscale@my-branch"
    assert run_cell(monkeypatch, url)[0][0][-1] == f"mlscale[colab] @ {url}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlscale-0.1.0-py3-none-any.whl").write_bytes(b"")
    req = run_cell(monkeypatch, "mlscale-0.1.0-py3-none-any.whl")[0][0][-1]   # relative: made absolute
    assert req == f"mlscale[colab] @ {(tmp_path / 'mlscale-0.1.0-py3-none-any.whl').as_uri()}"


def test_the_install_line_resolves_with_real_pip(monkeypatch, tmp_path):
    """The cell's own pip command, against this checkout, run by pip in --dry-run: the
    requirement parses, mlscale builds from the path, the extra exists and all its
    dependencies are satisfiable (here, from what is installed: --no-index)."""
    argv, _ = run_cell(monkeypatch, str(ROOT))[0]
    report = tmp_path / "report.json"
    monkeypatch.undo()
    proc = subprocess.run(argv + ["--dry-run", "--no-index", "--no-build-isolation", "--report", str(report)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not provide the extra" not in proc.stderr, proc.stderr
    installs = json.loads(report.read_text())["install"]
    mine = [i for i in installs if i["metadata"]["name"] == "mlscale"]
    assert len(mine) == 1, [i["metadata"]["name"] for i in installs]
    assert mine[0]["download_info"]["url"] == ROOT.as_uri()
    assert mine[0]["requested_extras"] == [setup_cell.EXTRA]
    assert setup_cell.EXTRA in mine[0]["metadata"]["provides_extra"]
    others = sorted(i["metadata"]["name"] for i in installs if i["metadata"]["name"] != "mlscale")
    assert others == [], f"not installed here, so not checked: {others}"


def test_what_the_requirement_builds_imports(tmp_path):
    """Install mlscale (no dependencies) from the checkout into a folder and import it from
    there in a fresh interpreter: the wheel holds the package and its CUDA C kernels."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), f"mlscale @ {ROOT.as_uri()}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = ("import mlscale, pathlib; p = pathlib.Path(mlscale.__file__).parent; "
            "print(p); print(len(list((p / 'kernels').glob('*.cu'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    where, n_cu = out.stdout.split()
    assert pathlib.Path(where).is_relative_to(target), where
    assert int(n_cu) == len(list((ROOT / "kernels").glob("*.cu"))) > 0


# --- Binder: binder/postBuild installs what the notebooks import --------------------------

# imported inside mlscale by what the notebooks call, so not visible in their import lines
LIBRARY_NEEDS = {
    "sklearn": "ms.data.load_digits (the real digits of notebooks 03-09)",
    "mpi4py": "the backend='mpi' sections",
    "mpich": "mpiexec for the backend='mpi' sections",
    "numba_cuda": "notebook 10's numba-CUDA kernels in numba's CUDA simulator",
    "ipywidgets": "tqdm.auto's progress bars",
    "nbval": "make test",
}
GPU_ONLY = {"cupy": "notebook 10 imports it only under `if GPU:`; Binder has no GPU"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ (]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names):
    """The distributions ``names`` pull in, following installed metadata (extras' requirements skipped)."""
    from importlib import metadata

    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        try:
            reqs = metadata.requires(n) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r]
    return seen


def notebook_imports():
    out = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for m in re.finditer(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", cell.source, re.M):
                out.setdefault((m.group(1) or m.group(2)).split(".")[0], set()).add(path.name[:2])
    return out


def test_binder_installs_what_the_notebooks_import():
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    from importlib import metadata

    post = (ROOT / "binder" / "postBuild").read_text()
    m = re.search(r"pip install[^\n]*?-e \"\.\[([\w,]+)\]\"", post)
    assert m, "binder/postBuild no longer runs pip install -e \".[extras]\""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in m.group(1).split(","):
        reqs += project["optional-dependencies"][extra]
    binder = _closure(_name(r) for r in reqs)
    dists = metadata.packages_distributions()
    imports = notebook_imports()
    third_party = {mod for mod in imports if mod not in sys.stdlib_module_names and mod != "mlscale"}
    assert {"numpy", "matplotlib", "IPython", "numba"} <= third_party   # the scan does see imports
    missing = {}
    for mod in sorted((third_party | set(LIBRARY_NEEDS)) - set(GPU_ONLY)):
        wanted = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if not wanted & binder:
            missing[mod] = LIBRARY_NEEDS.get(mod, f"imported by notebooks {sorted(imports.get(mod, []))}")
    assert not missing, f"binder/postBuild's extras do not install: {missing}"
