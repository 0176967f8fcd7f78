"""What every exercise checker returns, and the hint/solution store."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass
class CheckResult:
    """The verdict on a learner's function: ``passed``, the cases tried, what failed."""

    name: str
    cases: int = 0
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    not_implemented: bool = False

    @property
    def passed(self) -> bool:
        return not self.not_implemented and not self.failures and self.cases > 0

    def __bool__(self):
        return self.passed

    def summary(self) -> str:
        if self.not_implemented:
            return (
                f"{self.name}: not implemented yet (your function raised NotImplementedError). "
                f"Write it, then run this cell again; stuck? mlscale.check.hint({self.name!r})"
            )
        if self.passed:
            lines = [f"PASSED {self.name}: all {self.cases} cases right"]
        else:
            lines = [f"FAILED {self.name}: {len(self.failures)} of {self.cases} cases wrong"]
            lines += [f"  - {f}" for f in self.failures[:8]]
            if len(self.failures) > 8:
                lines.append(f"  ... and {len(self.failures) - 8} more")
            lines.append(f"Stuck? mlscale.check.hint({self.name!r})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return self.summary()

    def done(self, verbose=True):
        """Print the summary (if verbose) and return self: how every checker ends."""
        if verbose:
            print(self.summary())
        return self

    def raise_if_failed(self):
        if not self.passed:
            raise AssertionError(self.summary())
        return self


NOT_IMPLEMENTED = object()


def run_case(res, case, run, deadlock_hint=""):
    """Run one case of a checker (``run()`` launches the learner's code). Returns what
    it returned; or records why it failed in ``res`` and returns None; or returns
    NOT_IMPLEMENTED when the learner's function is still a stub."""
    from ..comm import CommError, DeadlockError

    try:
        return run()
    except NotImplementedError:
        res.not_implemented = True
        return NOT_IMPLEMENTED
    except DeadlockError as e:
        res.failures.append(f"{case}: deadlock - {str(e).splitlines()[1].strip()} ...{deadlock_hint}")
    except CommError as e:
        res.failures.append(f"{case}: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - a learner's bug, reported
        res.failures.append(f"{case}: your function raised {type(e).__name__}: {e}")
    return None


def try_case(res, case, run, judge, deadlock_hint=""):
    """Count one case, run it (``run_case``) and record what ``judge(output)`` finds wrong
    (a message, or None when right). Returns False when the learner's function is still a
    stub, so the checker stops: ``if not try_case(...): return res.done(verbose)``."""
    res.cases += 1
    failed = len(res.failures)
    out = run_case(res, case, run, deadlock_hint)
    if out is NOT_IMPLEMENTED:
        return False
    if len(res.failures) == failed:  # it ran (None too: a forgotten return is judged, not passed)
        bad = judge(out)
        if bad:
            res.failures.append(f"{case}: {bad}")
    return True


HINTS = {}
SOLUTIONS = {}


def register(name, hint_text, solution_fn):
    HINTS[name] = hint_text
    SOLUTIONS[name] = solution_fn


def hint(name):
    """Print the hint for exercise ``name``."""
    if name not in HINTS:
        raise KeyError(f"no exercise called {name!r}; exercises: {sorted(HINTS)}")
    print(HINTS[name])


def solution(name):
    """Print the source of a reference solution to exercise ``name``."""
    if name not in SOLUTIONS:
        raise KeyError(f"no exercise called {name!r}; exercises: {sorted(SOLUTIONS)}")
    print(inspect.getsource(SOLUTIONS[name]))
