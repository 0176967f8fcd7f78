"""What every exercise checker returns, and the hint/solution store."""
from __future__ import annotations

import inspect
import re
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
                f"Write it, then run this cell again; stuck? {hint_call(self.name)}"
            )
        if self.passed:
            lines = [f"PASSED {self.name}: all {self.cases} cases right"]
        else:
            lines = [f"FAILED {self.name}: {len(self.failures)} of {self.cases} cases wrong"]
            lines += [f"  - {f}" for f in self.failures[:8]]
            if len(self.failures) > 8:
                lines.append(f"  ... and {len(self.failures) - 8} more")
            lines.append(f"Stuck? {hint_call(self.name)}")
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


def hint_call(name) -> str:
    """The line a learner pastes to see a hint: it imports what it needs, so it works whatever
    name the notebook gave the checker module (``check``, ``check_parallel``, ...)."""
    return f"from mlscale.check import hint; hint({name!r})"


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


def solution_source(name) -> str:
    """The reference solution to exercise ``name`` as code that runs when pasted into a cell:
    its imports first (relative imports made absolute, the module-level names it uses
    imported from where they live), then the function."""
    if name not in SOLUTIONS:
        raise KeyError(f"no exercise called {name!r}; exercises: {sorted(SOLUTIONS)}")
    fn = SOLUTIONS[name]
    fn = getattr(fn, "py_func", fn)  # a numba kernel: its Python source
    module = inspect.getmodule(fn)
    package = module.__name__.rsplit(".", 1)[0] if module.__spec__ and module.__spec__.parent else module.__name__
    src = inspect.getsource(SOLUTIONS[name] if not hasattr(SOLUTIONS[name], "py_func") else fn)

    def absolute(m):
        dots, rest = len(m.group(1)), m.group(2)
        base = package.split(".")
        base = base[: len(base) - (dots - 1)]
        return "from " + ".".join(base + ([rest] if rest else [])) + " import"

    src = re.sub(r"from (\.+)([\w.]*) import", absolute, src)
    imports = []
    for used in _global_names(fn.__code__):
        if used not in vars(module) or re.search(rf"^\s*(import|from) .*\b{used}\b", src, re.M):
            continue
        obj = vars(module)[used]
        if inspect.ismodule(obj):
            line = f"import {obj.__name__}" + ("" if obj.__name__ == used else f" as {used}")
        elif getattr(obj, "__module__", None) and not isinstance(obj, (int, float, str, tuple)):
            line = f"from {obj.__module__} import {getattr(obj, '__name__', used)}"
            if getattr(obj, "__name__", used) != used:
                line += f" as {used}"
        else:
            line = f"from {module.__name__} import {used}"
        imports.append(line)
    return ("\n".join(sorted(set(imports))) + "\n\n\n" if imports else "") + src


def _global_names(code) -> list:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names.update(_global_names(const))
    return sorted(names)


def solution(name):
    """Print a reference solution to exercise ``name``, as code that runs when pasted."""
    print(solution_source(name))
