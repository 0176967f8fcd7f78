"""Issue 8: the checkers of gpipe_schedule, row_parallel_forward, mesh_coordinates,
sp_reduce_scatter and ssp_admission accept correct answers written differently from the
reference, and reject plausible mistakes with a message that names the mistake."""
import re

import numpy as np
import pytest

from mlscale.check import parallel as cp
from mlscale.check import ps as check_ps
from mlscale.check import transformer as ct


# ------------------------------------------------------------------ gpipe_schedule
def gpipe_appending(p, m):  # loops and append, one fresh list per stage
    stages = []
    for _ in range(p):
        ops = []
        for j in range(m):
            ops.append(("F", j))
        for j in range(m):
            ops.append(("B", j))
        stages.append(ops)
    return stages


def gpipe_shared_numpy(p, m):  # one list repeated p times, numpy micro-batch ids, lists not tuples
    one = [["F", j] for j in np.arange(m)] + [["B", j] for j in np.arange(m)]
    return [one] * p


def gpipe_off_by_one(p, m):  # micro-batches 1..m
    return [[("F", j) for j in range(1, m + 1)] + [("B", j) for j in range(1, m + 1)] for _ in range(p)]


def gpipe_swapped_args(p, m):  # one list per micro-batch instead of per stage
    return [[("F", j) for j in range(m)] + [("B", j) for j in range(m)] for _ in range(m)]


def gpipe_interleaved(p, m):  # F j, B j, F j+1, ...: one micro-batch at a time
    return [[op for j in range(m) for op in (("F", j), ("B", j))] for _ in range(p)]


def gpipe_last_backward_missing(p, m):
    return [[("F", j) for j in range(m)] + [("B", j) for j in range(m - 1)] for _ in range(p)]


@pytest.mark.parametrize("fn", [gpipe_appending, gpipe_shared_numpy])
def test_gpipe_accepts_other_correct_schedules(fn):
    res = cp.gpipe_schedule(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (gpipe_off_by_one, r"micro-batch 0\.\.\d+ exactly once"),
    (gpipe_swapped_args, r"list of \d+ per-stage lists"),
    (gpipe_interleaved, r"all \d+ forwards before the first backward"),
    (gpipe_last_backward_missing, r"exactly once"),
])
def test_gpipe_rejects_mistakes_by_name(fn, words):
    res = cp.gpipe_schedule(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary()), res.summary()
