"""The notebook 09 checkers accept the reference solutions and reject wrong answers."""

from mlscale.check import parallel as cp
from mlscale.check.core import HINTS, SOLUTIONS
from mlscale.parallel import one_f_one_b_schedule


def test_row_parallel_accepts_reference():
    assert cp.row_parallel_forward(cp.row_parallel_forward_solution, verbose=False).passed


def test_row_parallel_rejects_wrong_answers():
    def bias_every_rank(comm, x, w, b):
        return comm.all_reduce(x @ w + b)

    def no_all_reduce(comm, x, w, b):
        return x @ w + b

    def two_all_reduces(comm, x, w, b):
        return comm.all_reduce(comm.all_reduce(x @ w)) / comm.world_size + b

    def gathers(comm, x, w, b):  # right values, but p times the bytes of an all-reduce's result
        parts = comm.all_gather((x @ w)[None])  # (p, batch, out)
        return parts.sum(axis=0) + b

    def wrong_shape(comm, x, w, b):
        return comm.all_reduce(x @ w)[0] + b

    r = cp.row_parallel_forward(bias_every_rank, verbose=False)
    assert not r.passed and "bias" in r.failures[-1]
    assert not cp.row_parallel_forward(no_all_reduce, verbose=False).passed
    r = cp.row_parallel_forward(two_all_reduces, verbose=False)
    assert not r.passed and "2 times" in r.failures[0]
    r = cp.row_parallel_forward(gathers, verbose=False)
    assert not r.passed and "all_gather" in r.failures[0]
    r = cp.row_parallel_forward(wrong_shape, verbose=False)
    assert not r.passed and "shape" in r.failures[0]


def test_row_parallel_stub_is_not_implemented():
    def stub(comm, x, w, b):
        raise NotImplementedError

    r = cp.row_parallel_forward(stub, verbose=False)
    assert r.not_implemented and not r.passed and "not implemented yet" in r.summary()


def test_gpipe_checker():
    assert cp.gpipe_schedule(cp.gpipe_schedule_solution, verbose=False).passed
    assert not cp.gpipe_schedule(lambda p, m: None, verbose=False).passed  # forgot `return`
    def reversed_backward(p, m):
        return [[("F", j) for j in range(m)] + [("B", j) for j in reversed(range(m))] for _ in range(p)]

    assert cp.gpipe_schedule(reversed_backward, verbose=False).passed  # also GPipe
    r = cp.gpipe_schedule(one_f_one_b_schedule, verbose=False)
    assert not r.passed and "1F1B" in r.failures[0]
    r = cp.gpipe_schedule(lambda p, m: [[("B", j) for j in range(m)] + [("F", j) for j in range(m)]
                                        for _ in range(p)], verbose=False)
    assert not r.passed and "deadlocks" in r.failures[0]
    r = cp.gpipe_schedule(lambda p, m: [[("F", j) for j in range(m)] for _ in range(p)], verbose=False)
    assert not r.passed and "exactly once" in r.failures[0]
    r = cp.gpipe_schedule(lambda p, m: [[("F", 0), ("B", 0)]], verbose=False)
    assert not r.passed

    def stub(p, m):
        raise NotImplementedError

    assert cp.gpipe_schedule(stub, verbose=False).not_implemented


def test_hints_and_solutions_registered():
    for name in ("row_parallel_forward", "gpipe_schedule"):
        assert name in HINTS and name in SOLUTIONS
