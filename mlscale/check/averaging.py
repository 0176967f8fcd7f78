"""Checker for the model-averaging exercise (notebook 05): average the parameters.

The learner writes the communication of local SGD (Stich 2019; Lin et al. 2020),

    def average_params(comm, model):
        ...  # afterwards every rank's model.params is the mean over ranks of model.params

and :func:`model_averaging` checks it twice on simulated ranks (world sizes 1, 2, 3, 5):
once on models whose parameters differ on every rank (the oracle: the float64 mean of
the ranks' parameters, computed here), and once plugged into training as
``LocalSGD(H=2, averager=fn)``, whose final parameters must equal the library's own
local SGD. It also compares the bytes each rank sent with one all-reduce's.
"""
from __future__ import annotations

import numpy as np

from ..comm import NetworkModel, launch
from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

AVG_HINT = """\
Local SGD averages the PARAMETERS (not the gradients) every H steps. model.params is one
flat buffer holding every parameter, so one all-reduce does it, in place:
    comm.all_reduce(model.params, op="mean", out=model.params)
(or op="sum", then divide by comm.world_size). Write the result INTO model.params
(out=, or model.params[...] = ...): a returned array that nobody stores is lost.
Every rank must end with the same parameters: all_reduce, not reduce to one root.
Still stuck? from mlscale.check import solution; solution("model_averaging")"""

SIZES = [64, 16, 10]
WORLD_SIZES = (1, 2, 3, 5)
RTOL, ATOL = 1e-10, 1e-12


def average_params(comm, model):
    """Model averaging: every rank's parameters become the mean over ranks, with one
    all-reduce of the flat parameter buffer, written in place."""
    comm.all_reduce(model.params, op="mean", out=model.params)


def _all_reduce_bytes(p, net):
    """The most bytes a rank sends in one all-reduce of the parameters, over every algorithm
    ``comm.all_reduce`` offers but the naive one (an answer may pick any), and which that is."""
    from ..collectives import ALGORITHMS

    most, worst = 0, None
    for algo in ALGORITHMS["all_reduce"]:
        if algo == "naive":  # everyone to everyone: the strawman the course improves on
            continue

        def prog(comm, algo=algo):
            model = _model(comm.rank)
            comm.all_reduce(model.params, op="mean", algorithm=algo, out=model.params)
        try:
            sent = max(launch(prog, p, network=net).trace.per_rank_bytes())
        except Exception:  # noqa: BLE001 - an algorithm that does not take this world size
            continue
        if sent > most:
            most, worst = sent, algo
    return most, worst


def _model(rank):
    from ..nn import MLP

    model = MLP(SIZES, seed=0, dtype=np.float64)
    model.params += np.random.default_rng(100 + rank).standard_normal(model.num_params) * 0.1  # drifted
    model.grads[...] = np.random.default_rng(200 + rank).standard_normal(model.num_params)
    return model


def _once(fn):
    def prog(comm):
        model = _model(comm.rank)
        grads = model.grads.copy()
        ret = fn(comm, model)
        return model.params.copy(), not np.array_equal(grads, model.grads), ret

    return prog


def _train(fn, steps=6, H=2):
    from .. import data, nn, train

    X, y = data.load_digits()[:2]

    def prog(comm):
        model = nn.MLP(SIZES, seed=0, dtype=np.float64)
        train.train(comm, model, lambda m: nn.SGD(m, lr=0.2), X, y, sync=train.LocalSGD(H=H, averager=fn),
                    steps=steps, batch_size=12 * comm.world_size, check=False)
        return model.params.copy()

    return prog


def _diagnose(out, p):
    before = [_model(r).params for r in range(p)]
    mean = np.mean(before, axis=0)
    for r, (params, grads_changed, ret) in enumerate(out):
        if np.allclose(params, mean, rtol=RTOL, atol=ATOL):
            continue
        if p > 1 and np.allclose(params, p * mean, rtol=RTOL, atol=ATOL):
            return (f"rank {r}: model.params is {p} times the mean: you summed. Divide by "
                    "comm.world_size (or op=\"mean\")")
        if r != 0 and np.allclose(out[0][0], mean, rtol=RTOL, atol=ATOL):
            return (f"rank 0 has the mean but rank {r} does not: every rank needs it (all_reduce, not a "
                    "reduce to one root)")
        if np.array_equal(params, before[r]):
            if grads_changed:
                return (f"rank {r}: model.params unchanged but model.grads changed: local SGD averages the "
                        "PARAMETERS (the gradients were already used by each rank's own steps)")
            if ret is not None and np.allclose(np.asarray(ret).reshape(-1), mean, rtol=RTOL, atol=ATOL):
                return (f"rank {r}: you returned the mean but left model.params unchanged: write it back "
                        "(out=model.params, or model.params[...] = ...)")
            if p > 1 and out.trace.per_rank_bytes()[r]:
                return (f"rank {r}: you communicated, but model.params still holds this rank's own "
                        "parameters: the result was not written back into the buffer (`p = "
                        "comm.all_reduce(p)` rebinds the name p to a new array and leaves model.params "
                        "alone): use comm.all_reduce(model.params, op=\"mean\", out=model.params), or "
                        "model.params[...] = ...")
            return f"rank {r}: model.params still holds this rank's own parameters: nothing was averaged"
        i = int(np.argmax(~np.isclose(params, mean, rtol=RTOL, atol=ATOL)))
        return f"rank {r}: model.params[{i}] is {params[i]:.6g}; the mean over ranks is {mean[i]:.6g}"
    return None


def model_averaging(fn, world_sizes=WORLD_SIZES, verbose=True):
    """Check a learner's ``fn(comm, model)``: afterwards every rank's ``model.params`` must be
    the mean over ranks (float64, to 1e-10), the grads untouched, no more bytes sent than
    one all-reduce; and ``LocalSGD(H=2, averager=fn)`` must train to the same parameters
    as the library's local SGD."""
    res = CheckResult("model_averaging")
    net = NetworkModel(alpha=1e-6, beta=1e-9)
    for p in world_sizes:
        res.cases += 1
        case = f"p={p}, one average"
        out = run_case(res, case, lambda: launch(_once(fn), p, network=net))
        if out is NOT_IMPLEMENTED:
            return res.done(verbose)
        if out is None:
            continue
        bad = _diagnose(out, p)
        if bad is None and any(changed for _, changed, _ in out):
            bad = "model.grads changed: average the parameters only"
        if bad is None:
            mine, most, worst = max(out.trace.per_rank_bytes()), *_all_reduce_bytes(p, net)
            if mine > 1.01 * most:
                bad = (f"right values, but a rank sent {mine} bytes; one all-reduce of the parameters "
                       f"sends at most {most} (its costliest algorithm, {worst!r}): average with ONE "
                       "comm.all_reduce(model.params, op=\"mean\", out=model.params) (any algorithm=), "
                       "not one message per peer or per array")
        if bad:
            res.failures.append(f"{case}: {bad}")
            continue
        res.cases += 1
        case = f"p={p}, LocalSGD(H=2, averager=yours), 6 steps"
        got = run_case(res, case, lambda: launch(_train(fn), p, network=net))
        if got is None:
            continue
        want = launch(_train(None), p, network=net)
        for r in range(p):
            if not np.allclose(got[r], want[r], rtol=1e-9, atol=1e-12):
                res.failures.append(f"{case}: rank {r}'s parameters after training differ from the library's "
                                    "local SGD")
                break
    return res.done(verbose)


register("model_averaging", AVG_HINT, average_params)
