"""Checker for the parameter-server exercise (notebook 04): the SSP admission rule.

The learner writes the rule a stale-synchronous server applies before letting a worker
start its next step (Ho et al., NeurIPS 2013),

    def may_proceed(clock, slowest, staleness):
        # clock: steps this worker has finished; slowest: steps the slowest worker has
        # finished; staleness: s >= 0, or None for asynchronous (no bound)
        return ...  # True: the worker may start step `clock` now

and :func:`ssp_admission` checks it two ways: against the reference rule on a table of
cases (clock 0..40, every slowest <= clock, s in 0, 1, 2, 5, None), then plugged into a
real :class:`mlscale.train.ParameterServer` on simulated ranks with a straggler, where
every gradient's clock lag (:func:`mlscale.train.param_server.clock_lag`) must respect
the bound s and the run must be the reference rule's run, gradient for gradient.
"""
from __future__ import annotations

import numpy as np

from ..comm import NetworkModel, launch
from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

SSP_HINT = """\
A worker that has finished `clock` steps is about to start step number `clock`. SSP with
staleness s promises it will see every worker's updates up to clock `clock - s - 1`,
that is, at least `clock - s` finished steps from EVERY worker. The slowest worker has
finished `slowest` steps, so the worker may go iff
    slowest >= clock - s
s = 0 is lockstep (bulk synchronous): nobody starts step c+1 before all finished c.
staleness=None means asynchronous: always go (and do not compute None - clock).
Still stuck? from mlscale.check import solution; solution("ssp_admission")"""

STALENESS = (0, 1, 2, 5, None)
RUNS = ((3, 0), (3, 2), (4, 1))  # (workers, s) for the parameter-server runs


def may_proceed(clock, slowest, staleness):
    """SSP admission (Ho et al. 2013): go iff the slowest worker has finished at least
    ``clock - staleness`` steps, so that this worker sees every update up to clock
    ``clock - staleness - 1``; ``staleness=None`` (asynchronous): always go."""
    if staleness is None:
        return True
    return slowest >= clock - staleness


def _table(res, fn):
    """The rule on every (clock, slowest, s), one case per s; returns False when fn is
    still a stub."""
    for s in STALENESS:
        res.cases += 1
        bad = _first_wrong(fn, s)
        if bad is NOT_IMPLEMENTED:
            res.not_implemented = True
            return False
        if bad:
            res.failures.append(bad)
    return True


def _first_wrong(fn, s):
    for clock in range(41):
        for slowest in range(clock + 1):
            want = may_proceed(clock, slowest, s)
            call = f"may_proceed(clock={clock}, slowest={slowest}, staleness={s})"
            try:
                got = fn(clock, slowest, s)
            except NotImplementedError:
                return NOT_IMPLEMENTED
            except Exception as e:  # noqa: BLE001 - a learner's bug, reported
                return (f"{call} raised {type(e).__name__}: {e}"
                        + (" (staleness=None means asynchronous: always True)" if s is None else ""))
            if not isinstance(got, (bool, np.bool_)):
                return f"{call} returned {got!r}: return True or False"
            if bool(got) != want:
                why = ("too strict: the worker would wait although it may run up to s steps ahead"
                       if want else
                       f"too loose: the worker would read parameters missing the slowest worker's "
                       f"clock-{slowest} updates (it may miss only clocks after {clock - s - 1})")
                if not want and _always_goes(fn, s):
                    why += _always_goes_why(fn, s)
                return f"{call} returned {bool(got)}, expected {want}: {why}"
    return None


def _always_goes(fn, s):
    """Whether ``fn`` admits every (clock, slowest) of the table at staleness ``s``."""
    try:
        return all(bool(fn(c, m, s)) for c in range(41) for m in range(c + 1))
    except Exception:  # noqa: BLE001 - only a diagnosis; the table reports the error
        return False


def _always_goes_why(fn, s):
    """Why a rule that admits every worker at staleness ``s`` does so."""
    if s == 0 and not any(_always_goes(fn, k) for k in (1, 2)):
        return ("; at staleness=0 your rule lets every worker go, as if asynchronous: 0 is lockstep, "
                "only None is asynchronous (test `staleness is None`: `not staleness` is true for 0 too)")
    return (f"; your rule lets every worker go at staleness={s} whatever the clocks: "
            f"the bound is slowest >= clock - staleness (is a comparison the wrong way round, "
            f"or is the rule always True?)")


def _run(rule, workers, s):
    from .. import data, nn, train

    X, y = data.load_digits()[:2]
    net = NetworkModel(alpha=1e-6, beta=1e-10, speeds={workers: 0.3}, flops=1e8)  # the last worker straggles

    def prog(comm):
        model = nn.MLP([64, 8, 10], seed=0, dtype=np.float64)
        sync = train.ParameterServer("ssp", staleness=s, admit=rule)
        hist = train.train(comm, model, lambda t: nn.SGD(t, lr=0.05), X, y, sync=sync, steps=12,
                           batch_size=8 * workers, check=False)
        return hist

    return launch(prog, workers + 1, network=net)


def ssp_admission(fn, verbose=True):
    """Check a learner's ``fn(clock, slowest, staleness) -> bool``, the SSP admission rule:
    a table of cases against the reference, then inside a parameter server with a
    straggler (3 or 4 workers, s = 0, 1, 2): the clock lag of every applied gradient
    must be <= s, and the gradients must be applied in the same order, from the same
    clocks and parameter versions, as with the reference rule."""
    from ..train.param_server import clock_lag

    res = CheckResult("ssp_admission")
    if not _table(res, fn):
        return res.done(verbose)
    for workers, s in RUNS:
        res.cases += 1
        case = f"parameter server, {workers} workers (worker {workers} 3x slower), staleness={s}"
        out = run_case(res, case, lambda: _run(fn, workers, s),
                       " (too strict a rule: no worker is ever allowed to go on)")
        if out is NOT_IMPLEMENTED:
            return res.done(verbose)
        if out is None:
            continue
        server = out[0]
        lags = clock_lag(server)
        if max(lags) > s:
            i = int(np.argmax(np.array(lags) > s))
            w, c, v, _ = server.applied[i]
            res.failures.append(f"{case}: worker {w} computed its clock-{c} gradient on parameter version "
                                f"{v}, {lags[i]} clock(s) ahead of the slowest worker there: SSP allows {s}")
            continue
        want = _run(may_proceed, workers, s)[0]
        if server.applied != want.applied:
            res.failures.append(f"{case}: the bound holds, but workers waited longer than SSP needs "
                                f"({server.updates} gradients applied by virtual time {server.time * 1e3:.2f} ms; "
                                f"the reference: {want.updates} by {want.time * 1e3:.2f} ms)")
    return res.done(verbose)


register("ssp_admission", SSP_HINT, may_proceed)
