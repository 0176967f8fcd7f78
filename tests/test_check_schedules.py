"""The interleaved-schedule exercise (notebook 13): other right orders pass, the usual
mistakes fail with a verdict naming them."""
import re

import pytest

from mlscale.check import interleaved_order
from mlscale.check.schedules import interleaved_order_solution


def as_loops(p, m, v):  # the same order, written with explicit loops and lists
    out = []
    for s in range(p):
        fwd = []
        for k in range(m * v):
            fwd.append(("F", (k // (p * v)) * p + k % p, (k // p) % v))
        bwd = [("B", j, v - 1 - c) for _, j, c in fwd]
        w = min(m * v, 2 * (p - s - 1) + (v - 1) * p) if v > 1 else min(p - s - 1, m)
        ops = fwd[:w]
        for i in range(m * v - w):
            ops.append(fwd[w + i])
            ops.append(bwd[i])
        out.append(ops + bwd[m * v - w:])
    return out


def with_numpy(p, m, v):  # the same order from index arithmetic on arrays
    import numpy as np

    k = np.arange(m * v)
    fj, fc = (k // (p * v)) * p + k % p, (k // p) % v
    out = []
    for s in range(p):
        w = int(min(m * v, 2 * (p - s - 1) + (v - 1) * p) if v > 1 else min(p - s - 1, m))
        F = [("F", int(a), int(b)) for a, b in zip(fj, fc)]
        B = [("B", int(a), int(v - 1 - b)) for a, b in zip(fj, fc)]
        steady = [op for pair in zip(F[w:], B[:m * v - w]) for op in pair]
        out.append(F[:w] + steady + B[m * v - w:])
    return out


def plain_1f1b_warmup(p, m, v):  # forgot that every chunk needs its own warm-up
    out = interleaved_order_solution(p, m, v)
    if v == 1:
        return out
    res = []
    for s, stage in enumerate(out):
        fs = [o for o in stage if o[0] == "F"]
        bs = [o for o in stage if o[0] == "B"]
        w = min(p - s - 1, len(fs))
        ops = fs[:w]
        for i in range(len(fs) - w):
            ops += [fs[w + i], bs[i]]
        res.append(ops + bs[len(fs) - w:])
    return res


def backward_chunks_in_forward_order(p, m, v):
    return [[(o, j, c) if o == "F" else (o, j, v - 1 - c) for o, j, c in stage]
            for stage in interleaved_order_solution(p, m, v)]


def a_microbatch_missing(p, m, v):
    return [[o for o in stage if o[1] != m - 1] for stage in interleaved_order_solution(p, m, v)]


def gpipe_per_chunk(p, m, v):  # all forwards, then all backwards: right, but the bubble of GPipe
    return [[o for o in stage if o[0] == "F"] + [o for o in stage if o[0] == "B"]
            for stage in interleaved_order_solution(p, m, v)]


@pytest.mark.parametrize("fn", [as_loops, with_numpy, interleaved_order_solution])
def test_right_orders_pass(fn):
    res = interleaved_order(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, says", [
    (plain_1f1b_warmup, r"warm-up|deadlocks"),
    (backward_chunks_in_forward_order, r"deadlocks.*reverse order"),
    (a_microbatch_missing, r"missing \[\('B', \d, \d\)"),
    (gpipe_per_chunk, r"the memory is GPipe's"),
])
def test_mistakes_are_named(fn, says):
    res = interleaved_order(fn, verbose=False)
    assert not res.passed
    assert re.search(says, res.summary(), re.S), res.summary()
