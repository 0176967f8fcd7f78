"""Re-execute the course notebooks and store their outputs (what nbval compares against).

    python tools/execute_notebooks.py              # every notebook, in place
    python tools/execute_notebooks.py 05 09        # only notebooks whose name starts with 05 or 09
    python tools/execute_notebooks.py --check 05   # run, and list the cells whose text output changed
    python tools/execute_notebooks.py --out DIR    # write the executed copies to DIR, leave notebooks/ alone

Run it after a library change that alters what a notebook prints, then look at the diff
(``git diff notebooks/``) before committing: stored outputs are the course's expected results.
The kernel runs in ``notebooks/`` as nbval's does, with the environment of this process
(set ``OPENBLAS_CORETYPE`` or ``OMP_NUM_THREADS`` here to try another BLAS kernel family).

The comparison of ``--check`` uses the same sanitizing regexes as ``make test`` (notebooks/sanitize.cfg).
"""
from __future__ import annotations

import argparse
import configparser
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def sanitizers(cfg: pathlib.Path = NOTEBOOKS / "sanitize.cfg"):
    """The (regex, replacement) pairs of nbval's sanitize file."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def nbval_markers(source: str) -> set:
    """The nbval comment markers of a cell, read as nbval reads them: a comment line holding
    exactly the marker (``# NBVAL_IGNORE_OUTPUT``; ``# NBVAL_IGNORE_OUTPUT: why`` is NOT one)."""
    return {line.strip().lstrip("#").strip() for line in source.splitlines()
            if line.strip().startswith("#") and line.strip().lstrip("#").strip().startswith("NBVAL_")}


def cell_texts(nb, subs=()):
    """Per code cell, the text nbval compares (stdout/stderr streams and text/plain results), sanitized;
    None for a cell nbval does not compare (# NBVAL_IGNORE_OUTPUT, # NBVAL_SKIP)."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if nbval_markers(cell.source) & {"NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP"}:
            out.append(None)
            continue
        parts = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                parts.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                parts.append(o.get("data", {}).get("text/plain", ""))
            elif o.output_type == "error":
                parts.append(f"{o.ename}: {o.evalue}")
        text = "".join(parts)
        for rx, rep in subs:
            text = rx.sub(rep, text)
        out.append(text)
    return out


def execute(path: pathlib.Path, timeout: int = 300):
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefixes", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--check", action="store_true", help="do not write; list cells whose output changed")
    ap.add_argument("--out", type=pathlib.Path, help="write executed notebooks here instead of in place")
    args = ap.parse_args(argv)
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb")
                   if not args.prefixes or any(p.name.startswith(x) for x in args.prefixes))
    if not paths:
        print(f"no notebook in {NOTEBOOKS} starts with {args.prefixes}", file=sys.stderr)
        return 2
    subs = sanitizers()
    changed = 0
    for path in paths:
        t0 = time.perf_counter()
        old = cell_texts(nbformat.read(path, as_version=4), subs)
        nb = execute(path)
        new = cell_texts(nb, subs)
        diff = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
        changed += bool(diff)
        print(f"{path.name}: {time.perf_counter() - t0:.1f} s, "
              f"{'cells with other output: ' + str(diff) if diff else 'same text output'}")
        if args.check:
            for i in diff:
                print(f"  code cell {i}:\n    stored: {old[i]!r}\n    now:    {new[i]!r}")
            continue
        dest = path if args.out is None else args.out / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
