"""Checker for the data-parallel exercise (notebook 03): average the gradients.

The learner writes the communication of one data-parallel step,

    def average_gradients(comm, model, bucket_bytes):   # or (comm, model): no buckets
        ...  # afterwards model.grads is the mean over ranks of every rank's model.grads

and :func:`data_parallel_step` runs it inside a plain training loop on simulated
ranks: every rank computes the gradient of its slice of the global batch, calls the
function, then takes an SGD step. The oracle is one process training on the whole
global batch (float64), so after each call ``model.grads`` must equal the global-batch
gradient on every rank, and the parameters must stay equal to the oracle's. World
sizes 1, 2, 3 and 4; bucket sizes giving one bucket per tensor, two buckets, one bucket.
"""
from __future__ import annotations

import inspect

import numpy as np

from ..comm import NetworkModel, launch
from . import solutions
from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

DP_HINT = """\
After backward, every rank holds the gradient of ITS slice of the global batch. The
loss is a mean over the batch, so the global-batch gradient is the MEAN over ranks:
  for bucket in model.buckets(bucket_bytes):   # contiguous slices of the flat grads
      g = model.grads[bucket.slice]            # a view: writing into it writes model.grads
      comm.all_reduce(g, op="sum", out=g)      # one all-reduce per bucket, in place
      g /= comm.world_size                     # the mean (or op="mean" in one go)
Average the GRADIENTS, not the parameters: the optimizer then takes the same step on
every rank, so the models stay identical without ever sending a parameter.
Still stuck? from mlscale.check import solution; solution("data_parallel_step")"""

SIZES = (64, 32, 16, 10)  # six tensors: 16 KiB, 256 B, 4 KiB, 128 B, 1.3 KiB, 80 B in float64
BUCKETS = (1, 2048, 1 << 30)  # one bucket per tensor, two buckets, one bucket
WORLD_SIZES = (1, 2, 3, 4)
STEPS, BATCH, LR = 3, 24, 0.5  # 24 splits over 1, 2, 3 and 4 ranks
RTOL, ATOL = 1e-9, 1e-12


class _CountingComm:
    """The rank's communicator, counting the all-reduce calls the learner makes."""

    def __init__(self, comm):
        self._comm = comm
        self.all_reduce_calls = 0

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def all_reduce(self, x, *args, **kwargs):
        self.all_reduce_calls += 1
        return self._comm.all_reduce(x, *args, **kwargs)

    allreduce = psum = all_reduce


def _data():
    from ..data import load_digits

    X, y = load_digits()[:2]
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(X))[: STEPS * BATCH].reshape(STEPS, BATCH)
    return [(X[i].astype(np.float64), y[i]) for i in idx]


def _model():
    from ..nn import MLP

    return MLP(list(SIZES), seed=11, dtype=np.float64)


def _oracle(batches):
    """One process, the whole global batch, plain SGD: the gradients and final params."""
    model = _model()
    grads = []
    for xb, yb in batches:
        model.loss_and_grad(xb, yb)
        grads.append(model.grads.copy())
        model.params -= LR * model.grads
    return grads, model.params.copy()


def _n_args(fn):
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return 3 if len(params) >= 3 else 2
    except (TypeError, ValueError):
        return 3


def data_parallel_step(fn, world_sizes=WORLD_SIZES, verbose=True):
    """Check a learner's gradient averaging ``fn(comm, model, bucket_bytes)`` (or
    ``fn(comm, model)``): afterwards every rank's ``model.grads`` must be the mean of
    the ranks' gradients, i.e. the gradient of one process on the global batch.

    With three arguments each bucket of ``model.buckets(bucket_bytes)`` must be
    all-reduced once (one ``comm.all_reduce`` call per bucket, when the function uses
    ``all_reduce``). The parameters must not be touched, and after a few SGD steps
    they must equal single-process training on the global batch.
    """
    res = CheckResult("data_parallel_step")
    batches = _data()
    want_grads, want_params = _oracle(batches)
    slots = _model().slots
    three = _n_args(fn) == 3
    net = NetworkModel(alpha=1e-6, beta=1e-9)
    counts = []  # call-count complaints go last: wrong values say more
    for p in world_sizes:
        for bucket_bytes in (BUCKETS if three else (None,)):
            res.cases += 1
            nb = len(_model().buckets(bucket_bytes)) if three else 1
            case = f"p={p}" + (f", bucket_bytes={bucket_bytes} ({nb} bucket{'s' * (nb > 1)})" if three else "")

            def prog(comm, bucket_bytes=bucket_bytes):
                from ..data import split_batch

                model = _model()
                counting = _CountingComm(comm)
                steps = []
                for xb, yb in batches:
                    model.loss_and_grad(*split_batch((xb, yb), comm.rank, comm.world_size))
                    local, before = model.grads.copy(), model.params.copy()
                    counting.all_reduce_calls = 0
                    ret = fn(counting, model, bucket_bytes) if three else fn(counting, model)
                    steps.append({
                        "local": local,
                        "grads": model.grads.copy(),
                        "params_changed": not np.array_equal(before, model.params),
                        "ret": np.array(ret, dtype=np.float64, copy=True) if _is_array(ret) else None,
                        "calls": counting.all_reduce_calls,
                    })
                    model.params -= LR * model.grads
                return steps, model.params.copy()

            out = run_case(res, case, lambda: launch(prog, p, network=net),
                           " (every rank must all-reduce the same buckets in the same order)")
            if out is NOT_IMPLEMENTED:
                return res.done(verbose)
            if out is None:
                continue
            bad = _diagnose(out, p, want_grads, want_params, slots)
            if bad is None and three:
                bad = _count_calls(out, slots, nb, bucket_bytes)
                if bad:
                    counts.append(f"{case}: {bad}")
                    continue
            if bad:
                res.failures.append(f"{case}: {bad}")
    res.failures += counts
    return res.done(verbose)


def _is_array(x):
    return x is not None and hasattr(x, "shape") and hasattr(x, "dtype")


def _close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL)


def _diagnose(out, p, want_grads, want_params, slots):
    """The first thing wrong with one case, in words, or None."""
    for r, (steps, _) in enumerate(out):
        for t, s in enumerate(steps):
            if s["params_changed"]:
                return (f"rank {r}, step {t}: your function changed model.params. Average the "
                        "GRADIENTS (model.grads), not the parameters: the optimizer then takes the "
                        "same step on every rank")
    for t in range(len(want_grads)):
        for r, (steps, _) in enumerate(out):
            s, E = steps[t], want_grads[t]
            g, L = s["grads"], s["local"]
            if _close(g, E):
                continue
            if p > 1 and _close(g, p * E):
                return (f"rank {r}, step {t}: model.grads is {p} times the average: you summed. "
                        "Divide by comm.world_size (or use op=\"mean\")")
            if np.array_equal(g, L):
                if s["ret"] is not None and _close(s["ret"].reshape(-1), E):
                    return (f"rank {r}, step {t}: your function returned the average but left "
                            "model.grads unchanged: write it back (comm.all_reduce(g, out=g), "
                            "or g[...] = ...)")
                if s["calls"]:
                    return (f"rank {r}, step {t}: you called comm.all_reduce, but model.grads still holds "
                            "this rank's own gradient: the result was not written back into the buffer "
                            "(`g = comm.all_reduce(g)` rebinds the name g to a new array and leaves "
                            "model.grads alone): use comm.all_reduce(g, op=\"mean\", out=g), or g[...] = ...")
                if r != 0 and _close(out[0][0][t]["grads"], E):
                    return (f"rank 0 has the average but rank {r}, step {t} still holds its own gradient: "
                            "every rank takes the SGD step, so every rank needs it (all_reduce, not a "
                            "reduce to one root)")
                return (f"rank {r}, step {t}: model.grads still holds this rank's own gradient: "
                        "nothing was averaged")
            wrong = [sl for sl in slots if not _close(g[sl.start:sl.stop], E[sl.start:sl.stop])]
            untouched = [sl.name for sl in wrong if np.array_equal(g[sl.start:sl.stop], L[sl.start:sl.stop])]
            if untouched and len(untouched) == len(wrong):
                return (f"rank {r}, step {t}: parameters {untouched} were not averaged, the "
                        "others were (is a bucket missing from your loop?)")
            sl = wrong[0]
            i = sl.start + int(np.argmax(~np.isclose(g[sl.start:sl.stop], E[sl.start:sl.stop],
                                                     rtol=RTOL, atol=ATOL)))
            return (f"rank {r}, step {t}: model.grads[{i}] (in {sl.name!r}) is {g[i]:.6g}; the mean "
                    f"over ranks (the global-batch gradient) is {E[i]:.6g}")
    for r, (_, params) in enumerate(out):
        if not _close(params, want_params):
            return (f"rank {r}: after {len(want_grads)} SGD steps the parameters differ from one "
                    "process training on the global batch")
    return None


def _count_calls(out, slots, nbuckets, bucket_bytes):
    """Right values: did it take one all-reduce per bucket? (Only when it used all_reduce.)"""
    for r, (steps, _) in enumerate(out):
        calls = steps[0]["calls"]
        if calls and calls != nbuckets:
            per = " (one per tensor?)" if calls == len(slots) else ""
            return (f"rank {r}: {calls} comm.all_reduce call(s){per} for {nbuckets} bucket(s) of "
                    f"model.buckets({bucket_bytes}): all-reduce each bucket once")
    return None


register("data_parallel_step", DP_HINT, solutions.data_parallel_step)
