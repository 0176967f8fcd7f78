"""Stored notebook outputs that nbval compares must not carry digits that depend on the machine.

Another CPU picks other BLAS kernels (and another thread count other summation orders), so
the last digits of a floating-point sum differ from machine to machine. A compared output
must therefore never show: a negative zero (``-0.``, ``-0.000``), a rounding-level number
(``5.7e-15``), or a float printed with all its digits (``1.0658141036401503e-14``). Such a value
is asserted in the cell instead (``< 1e-12: True``); see the README, "Development".
"""
from __future__ import annotations

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from execute_notebooks import cell_texts  # noqa: E402

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# a negative zero as numpy or format() prints it: -0. / -0.0 / -0.000 not followed by a nonzero digit
NEG_ZERO = re.compile(r"(?<![\w.])-0\.0*(?![0-9]*[1-9])(?![\w.])")
# a number whose size is set by rounding: 1e-13 and below, in exponent notation
ROUNDING = re.compile(r"\b\d(?:\.\d+)?e-(?:1[3-9]|[2-9]\d|\d{3})\b")
# a float with 13 or more significant digits (a repr, not a chosen precision)
FULL_REPR = re.compile(r"\b\d\.\d{12,}(?:e[-+]\d+)?\b|\b0\.0*[1-9]\d{12,}\b")


def bad_spans(text: str):
    spans = {m.start(): m.group(0) for rx in (FULL_REPR, ROUNDING, NEG_ZERO) for m in rx.finditer(text)}
    return [spans[k] for k in sorted(spans)]


def test_the_patterns_catch_what_they_should():
    assert bad_spans("eigenvalues: [-1.    -0.707 -0.    0.   ]") == ["-0."]
    assert bad_spans("x -0.000 y") == ["-0.000"]
    assert bad_spans("max difference 5.7e-15") == ["5.7e-15"]
    assert bad_spans("= 1.0658141036401503e-14") == ["1.0658141036401503e-14"]
    assert bad_spans("-0.707, 0.0e+00, 3.2e-05, 2e-12, < 1e-12: True, 0.958, 10.000000 µs, -0.040725") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_compared_outputs_have_no_machine_dependent_digits(path):
    nb = nbformat.read(path, as_version=4)
    found = {i: spans for i, text in enumerate(cell_texts(nb)) if text and (spans := bad_spans(text))}
    assert not found, (
        f"{path.name}: code cells {sorted(found)} print digits that differ from CPU to CPU: "
        f"{found}. Assert the value with a tolerance and print the comparison "
        f"(e.g. f'< 1e-12: {{err < 1e-12}}'), add 0.0 to rounded arrays (no -0.), "
        f"or mark the cell # NBVAL_IGNORE_OUTPUT and assert its claims")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_spelled_as_nbval_reads_them(path):
    """nbval honours a marker only as a comment line holding exactly it: '# NBVAL_IGNORE_OUTPUT: why'
    is silently not a marker (the output is then compared after all)."""
    known = {"NBVAL_IGNORE_OUTPUT", "NBVAL_CHECK_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP"}
    nb = nbformat.read(path, as_version=4)
    wrong = [line.strip() for cell in nb.cells if cell.cell_type == "code"
             for line in cell.source.splitlines()
             if "NBVAL_" in line and line.strip().lstrip("#").strip() not in known]
    assert not wrong, f"{path.name}: {wrong}: put the marker alone on its line, the reason on the next"
