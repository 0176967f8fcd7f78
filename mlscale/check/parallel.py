"""Checkers for the model-parallelism exercises (notebook 09).

1. ``row_parallel_forward(fn)``: the learner writes the forward of a row-parallel linear
   layer (Megatron-LM, Shoeybi et al. 2019),

       def fn(comm, x_shard, w_shard, bias):   # x_shard (batch, my rows), w_shard (my rows, out)
           ...                                 # -> Y = X W + b, (batch, out), on EVERY rank

   checked on 1, 2, 3, 4 and 5 simulated ranks, with input sizes that do not divide by
   the number of ranks, against ``X @ W + b`` on one process, with exactly one
   all-reduce and no other collective.
2. ``gpipe_schedule(fn)``: the learner writes ``fn(num_stages, num_microbatches)`` ->
   per stage, the ordered list of ``("F" | "B", microbatch)`` of GPipe; played under the
   pipeline's dependencies, it must finish in (m + p - 1)(t_fwd + t_bwd), the bubble
   (p - 1)/(m + p - 1), and run every forward before any backward on each stage.
"""
from __future__ import annotations

import numpy as np

from ..comm import launch
from ..parallel.pp_schedule import bubble_fraction, makespan, measured_bubble, peak_in_flight, play
from ..parallel.tp_comm import shard_range
from .core import CheckResult, register, try_case

ROW_HINT = """\
Rank r holds columns rows_r of X and the same rows of W, so X_r @ W_r is rank r's
PARTIAL SUM of X @ W = sum over r of X_r @ W_r. One all-reduce completes it on every
rank; the bias belongs to the full sum, so add it ONCE, after the all-reduce:
    partial = x_shard @ w_shard                  # (batch, out)
    y = comm.all_reduce(partial, op="sum")       # Megatron's g: the only communication
    return y + bias
Adding the bias before the all-reduce adds it p times.
Still stuck? from mlscale.check import solution; solution("row_parallel_forward")"""

GPIPE_HINT = """\
GPipe runs, on every stage, all the forwards, then all the backwards:
    one = [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
    return [list(one) for _ in range(p)]
Stage s cannot start F j before stage s-1 finished it, nor B j before stage s+1 did:
the play gives the idle "bubble" (p-1)/(m+p-1) at the start and at the end.
Still stuck? from mlscale.check import solution; solution("gpipe_schedule")"""


def row_parallel_forward_solution(comm, x_shard, w_shard, bias):
    """Row-parallel linear forward: partial sums, one all-reduce (Megatron's g), + bias once."""
    partial = x_shard @ w_shard  # (batch, out): my share of the sum over the input features
    y = comm.all_reduce(partial, op="sum")  # every rank gets X @ W
    return y + bias


def gpipe_schedule_solution(num_stages, num_microbatches):
    """GPipe (Huang et al. 2019): all forwards, then all backwards, on every stage."""
    one = [("F", j) for j in range(num_microbatches)] + [("B", j) for j in range(num_microbatches)]
    return [list(one) for _ in range(num_stages)]


class _CountingComm:
    """The rank's communicator, counting the collectives the learner calls."""

    COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "gather", "scatter",
                   "all_to_all", "all_to_all_v", "alltoall")

    def __init__(self, comm):
        self._comm = comm
        self.calls = {}

    def __getattr__(self, name):
        attr = getattr(self._comm, name)
        if name in self.COLLECTIVES:
            def counted(*args, **kwargs):
                self.calls[name] = self.calls.get(name, 0) + 1
                return attr(*args, **kwargs)
            return counted
        return attr


def row_parallel_forward(fn, world_sizes=(1, 2, 3, 4, 5), verbose=True):
    """Check ``fn(comm, x_shard, w_shard, bias) -> X @ W + b`` on every rank, one all-reduce."""
    res = CheckResult("row_parallel_forward")
    for p in world_sizes:
        for batch, n_in, n_out in ((3, 7, 5), (4, 10, 1), (2, p, 3)):
            case = f"p={p}, X ({batch}, {n_in}), W ({n_in}, {n_out})"
            rng = np.random.default_rng(1000 * p + n_in)
            X, W, b = rng.standard_normal((batch, n_in)), rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)
            want = X @ W + b

            def prog(comm):
                lo, hi = shard_range(n_in, comm.world_size, comm.rank)
                counted = _CountingComm(comm)
                y = fn(counted, X[:, lo:hi].copy(), W[lo:hi].copy(), b.copy())
                return y, counted.calls

            if not try_case(res, case, lambda: launch(prog, p), lambda out: _check_row(out, want, p, (X, W, b))):
                return res.done(verbose)
    return res.done(verbose)


def _check_row(out, want, p, xwb):
    X, W, b = xwb
    calls = out[0][1]  # the collectives first: a wrong one explains wrong values too
    other = {k: v for k, v in calls.items() if k != "all_reduce"}
    if other:
        return f"called {other}: the row-parallel forward needs only one all-reduce"
    if calls.get("all_reduce", 0) != 1:
        return f"called all_reduce {calls.get('all_reduce', 0)} times per forward; Megatron's g is exactly one"
    for r, (y, _) in enumerate(out):
        if y is None:
            return f"rank {r} returned None: return Y = X @ W + b (every rank)"
        y = np.asarray(y)
        if y.shape != want.shape:
            return f"rank {r} returned shape {y.shape}, expected {want.shape} (batch, out_features)"
        if not np.allclose(y, want, rtol=1e-10, atol=1e-10):
            diff = y - want
            b_times = diff[0] if np.allclose(diff, diff[0], atol=1e-8) else None
            if b_times is not None and p > 1:
                return (f"rank {r}: off by the same row vector for every example: is the bias added "
                        f"{p} times (before the all-reduce)? add it once, after")
            lo, hi = shard_range(X.shape[1], p, r)
            own = X[:, lo:hi] @ W[lo:hi]
            if np.allclose(y, (want - b) / p + b, rtol=1e-10, atol=1e-10):
                return (f"rank {r}: the result is the mean of the partial sums (X @ W / {p}): "
                        f"the row-parallel forward needs their sum, op=\"sum\"")
            if np.allclose(y, own + b, rtol=1e-10, atol=1e-10) or np.allclose(y, own, rtol=1e-10, atol=1e-10):
                return (f"rank {r} returned its own partial sum X_r @ W_r: comm.all_reduce returns the sum "
                        f"and leaves its input as it was; use its return value (or pass out=)")
            return f"rank {r}: max error {np.abs(diff).max():.3g} against X @ W + b"
    return None


def gpipe_schedule(fn, cases=((1, 1), (1, 4), (2, 1), (2, 3), (3, 4), (4, 2), (4, 8), (5, 6)), verbose=True):
    """Check ``fn(num_stages, num_microbatches)`` -> per-stage GPipe op lists."""
    res = CheckResult("gpipe_schedule")
    for p, m in cases:
        if not try_case(res, f"p={p}, m={m}", lambda: fn(p, m), lambda ops: _check_gpipe(ops, p, m)):
            return res.done(verbose)
    return res.done(verbose)


def _check_gpipe(ops, p, m):
    if not isinstance(ops, (list, tuple)) or len(ops) != p:
        n = len(ops) if hasattr(ops, "__len__") else "?"
        return f"expected a list of {p} per-stage lists, got {type(ops).__name__} of length {n}"
    for s, stage in enumerate(ops):
        try:
            items = sorted((str(op), int(j)) for op, j in stage)
        except (TypeError, ValueError):
            return f"stage {s}: every entry must be a pair (\"F\" or \"B\", microbatch)"
        expect = sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
        if items != expect:
            return f"stage {s} must run F and B of every micro-batch 0..{m - 1} exactly once, got {list(stage)}"
    try:
        slots = play(ops, 1.0, 2.0)
    except ValueError as e:
        return str(e)
    if peak_in_flight(ops) != [m] * p:
        return (f"activations in flight per stage {peak_in_flight(ops)}: GPipe runs all {m} forwards "
                f"before the first backward (that is 1F1B-like)")
    want = (m + p - 1) * 3.0
    if abs(makespan(slots) - want) > 1e-9:
        return f"the schedule takes {makespan(slots)} time units, GPipe takes (m+p-1)(1+2) = {want}"
    if abs(measured_bubble(slots, p) - bubble_fraction(p, m)) > 1e-9:
        return f"bubble {measured_bubble(slots, p):.4f}, expected (p-1)/(m+p-1) = {bubble_fraction(p, m):.4f}"
    return None


register("row_parallel_forward", ROW_HINT, row_parallel_forward_solution)
register("gpipe_schedule", GPIPE_HINT, gpipe_schedule_solution)

__all__ = ["row_parallel_forward", "gpipe_schedule", "row_parallel_forward_solution", "gpipe_schedule_solution"]
