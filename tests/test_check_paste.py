"""What a verdict tells the learner to type must work where the learner is.

- ``solution(name)`` prints code that runs when pasted into a fresh cell (no relative
  imports, its module-level names imported), and that code passes the exercise's checker;
- the hint line in a verdict imports what it calls (notebooks import the checkers under
  several names: ``check``, ``check_parallel``, ...), so it runs in a fresh namespace.
"""
import contextlib
import io
import re

import pytest

import mlscale.check as check
from mlscale.check import core

NAMES = sorted(core.SOLUTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_a_pasted_solution_runs_and_passes_its_checker(name):
    src = core.solution_source(name)
    assert "from ." not in src, src
    ns = {}
    exec(compile(src, f"<pasted solution {name}>", "exec"), ns)   # a fresh cell: nothing imported
    fn = ns[getattr(core.SOLUTIONS[name], "__name__")]
    import inspect
    checker = getattr(check, name, None) or getattr(inspect.getmodule(core.SOLUTIONS[name]), name)
    res = checker(fn, verbose=False)
    assert res.passed, res.summary()


def test_the_hint_line_of_a_verdict_runs_as_pasted():
    res = core.CheckResult("ring_all_reduce", cases=1, failures=["a case: wrong"])
    line = res.summary().splitlines()[-1]
    code = re.sub(r"^Stuck\? ", "", line)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    assert out.getvalue().strip() == core.HINTS["ring_all_reduce"].strip()
    stub = core.CheckResult("ring_all_reduce", not_implemented=True).summary()
    assert "from mlscale.check import hint; hint('ring_all_reduce')" in stub


@pytest.mark.parametrize("name", NAMES)
def test_every_hint_ends_with_a_solution_line_that_runs(name):
    last = core.HINTS[name].strip().splitlines()[-1]
    assert last.startswith("Still stuck? "), last
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(last.removeprefix("Still stuck? "), {})
    assert "def " in out.getvalue()
