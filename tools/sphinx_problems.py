"""A Sphinx extension that keeps every warning and error of the reading phase per page,
across incremental builds: the book's record of its reST problems (docs/book/conf.py).

Sphinx prints a page's warnings only when it reads that page again: a second ``make
book`` with nothing changed prints none, however many docstrings are broken. This
extension keeps what each page's reading logged (docutils' messages on a docstring that is
not valid reST, autodoc's failures to import, ...) in the build environment, which Sphinx
pickles with the doctrees: a page read again replaces its record, an unchanged page keeps
it, a removed page loses it. After every build, all of it is written to
``<doctrees>/problems.json`` (``{docname: [line, ...]}``, each line as Sphinx prints it,
``path:line: WARNING: message [type]``); :func:`read_problems` reads it back.

What Sphinx logs after the reading (the consistency check: a page in no toctree; the
writing: a broken cross-reference) is not kept: it is in the log of the build that
logged it (build_book.problems reads that too).

An environment pickled by a build without this extension (no record) makes Sphinx read
every page again, so the record is never partial. Warnings silenced by
``suppress_warnings`` are not kept, as Sphinx does not print them.

    extensions = [..., "sphinx_problems"]           # conf.py (tools/ on sys.path)
    sphinx_problems.read_problems(out / "doctrees")   # after the build
"""
from __future__ import annotations

import copy
import json
import logging
import pathlib

FILENAME = "problems.json"
_ATTR = "mlscale_read_problems"      # on the BuildEnvironment: {docname: [line, ...]}


def read_problems(doctreedir) -> dict[str, list[str]]:
    """The problems of the last build whose doctrees are in ``doctreedir``, by page.
    Raises FileNotFoundError (naming the file) where no build with this extension ran."""
    f = pathlib.Path(doctreedir) / FILENAME
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no record of the build's problems (a build without "
                                "the sphinx_problems extension, or none yet)")
    return json.loads(f.read_text())


class _Recorder(logging.Handler):
    """Keeps the warnings (and errors) logged while a page is read, under its docname."""

    def __init__(self, app):
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record):
        from sphinx.util.build_phase import BuildPhase
        from sphinx.util.logging import WarningLogRecordTranslator, is_suppressed_warning
        app = self.app
        env = getattr(app, "env", None)
        if env is None or app.phase != BuildPhase.READING:
            return
        docname = env.current_document.docname
        if not docname:        # not inside a page (or the re-emission of one's warnings)
            return
        if is_suppressed_warning(getattr(record, "type", None), getattr(record, "subtype", None),
                                 app.config.suppress_warnings):
            return
        record_of = getattr(env, _ATTR, None)
        if record_of is None:
            return
        r = copy.copy(record)
        WarningLogRecordTranslator(app).filter(r)     # the location and " [type]" Sphinx prints
        line = r.getMessage().strip()
        kept = record_of.setdefault(docname, [])
        if line not in kept:
            kept.append(line)


def _outdated(app, env, added, changed, removed):
    """An environment without a record (pickled before this extension ran): read it all."""
    if not hasattr(env, _ATTR):
        setattr(env, _ATTR, {})
        return sorted(set(env.all_docs) - set(added) - set(removed))
    return []


def _purge(app, env, docname):
    getattr(env, _ATTR, {}).pop(docname, None)


def _merge(app, env, docnames, other):          # parallel reading (sphinx-build -j N)
    mine = env.__dict__.setdefault(_ATTR, {})
    for d in docnames:
        if d in getattr(other, _ATTR, {}):
            mine[d] = getattr(other, _ATTR)[d]


def _write(app, exception):
    if exception is not None or app.env is None:
        return
    record = {d: lines for d, lines in sorted(getattr(app.env, _ATTR, {}).items())
              if lines and d in app.env.all_docs}
    (pathlib.Path(app.doctreedir) / FILENAME).write_text(json.dumps(record, indent=1) + "\n")


def setup(app):
    logging.getLogger("sphinx").addHandler(_Recorder(app))
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("build-finished", _write)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True,
            "env_version": 1}
