"""The exercise checkers accept right answers and reject wrong ones."""
import numpy as np
import pytest

from mlscale import check
from mlscale.check import solutions


def test_reference_solution_passes():
    r = check.ring_all_reduce(solutions.ring_all_reduce, verbose=False)
    assert r.passed and r.cases == 45 and not r.failures  # 22 (p, n) pairs x 2 dtypes + one above the eager limit


def test_not_implemented_is_reported_not_raised(capsys):
    def todo(comm, x):
        raise NotImplementedError

    r = check.ring_all_reduce(todo)
    assert not r.passed and r.not_implemented
    assert "not implemented yet" in capsys.readouterr().out


def returns_input(comm, x):
    return x


def gathers_at_root(comm, x):  # right values, wrong traffic
    if comm.rank == 0:
        acc = x.copy()
        for src in range(1, comm.world_size):
            acc += comm.recv(src)
        for dst in range(1, comm.world_size):
            comm.send(acc, dst)
        return acc
    comm.send(x, 0)
    return comm.recv(0)


def uses_library(comm, x):
    return comm.all_reduce(x, algorithm="ring")


def everyone_receives_first(comm, x):
    p, r = comm.world_size, comm.rank
    if p == 1:
        return x
    got = comm.recv((r - 1) % p)
    comm.send(x, (r + 1) % p)
    return x + got


def assumes_divisible(comm, x):
    p, r = comm.world_size, comm.rank
    chunks = np.split(x.copy(), p)  # fails when p does not divide len(x)
    for s in range(p - 1):
        chunks[(r - s - 1) % p] += comm.sendrecv(chunks[(r - s) % p], (r + 1) % p, (r - 1) % p)
    for s in range(p - 1):
        chunks[(r - s) % p][...] = comm.sendrecv(chunks[(r + 1 - s) % p], (r + 1) % p, (r - 1) % p)
    return np.concatenate(chunks)


def one_step_short(comm, x):
    p, r = comm.world_size, comm.rank
    chunks = np.array_split(x.copy(), p)
    for s in range(max(p - 2, 0)):
        chunks[(r - s - 1) % p] += comm.sendrecv(chunks[(r - s) % p], (r + 1) % p, (r - 1) % p)
    for s in range(p - 1):
        chunks[(r - s) % p][...] = comm.sendrecv(chunks[(r + 1 - s) % p], (r + 1) % p, (r - 1) % p)
    return np.concatenate(chunks)


def blocking_send_then_recv(comm, x):
    """A ring with send-then-recv on every rank: right below the eager limit, a deadlock above."""
    p, r = comm.world_size, comm.rank
    chunks = np.array_split(x.copy(), p)
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        comm.send(chunks[(r - s) % p], right)
        chunks[(r - s - 1) % p] += comm.recv(left)
    for s in range(p - 1):
        comm.send(chunks[(r + 1 - s) % p], right)
        chunks[(r - s) % p][...] = comm.recv(left)
    return np.concatenate(chunks)


def irecv_first(comm, x):
    """A correct ring written otherwise than the solution: receives posted before the sends."""
    p, r = comm.world_size, comm.rank
    chunks = np.array_split(x.copy(), p)
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        req = comm.irecv(left)
        comm.send(chunks[(r - s) % p], right)
        chunks[(r - s - 1) % p] += req.wait()
    for s in range(p - 1):
        req = comm.irecv(left)
        comm.send(chunks[(r + 1 - s) % p], right)
        chunks[(r - s) % p][...] = req.wait()
    return np.concatenate(chunks)


def test_a_ring_that_posts_receives_first_passes():
    r = check.ring_all_reduce(irecv_first, verbose=False)
    assert r.passed, r.summary()


def test_blocking_send_then_recv_is_caught_above_the_eager_limit():
    r = check.ring_all_reduce(blocking_send_then_recv, verbose=False)
    assert not r.passed and len(r.failures) == 1, r.failures
    assert "above the eager limit" in r.failures[0] and "Post the receive first" in r.failures[0]


def returns_nothing(comm, x):
    solutions.ring_all_reduce(comm, x)


@pytest.mark.parametrize(
    "wrong, says",
    [
        (returns_input, "the sum over ranks"),
        (gathers_at_root, "a ring sends 2(p-1)/p"),
        (uses_library, "library's collectives"),
        (everyone_receives_first, "deadlock"),
        (assumes_divisible, "raised ValueError"),
        (one_step_short, "the sum over ranks"),
        (returns_nothing, "returned None"),
    ],
)
def test_wrong_answers_are_rejected_with_a_reason(wrong, says):
    r = check.ring_all_reduce(wrong, verbose=False)
    assert not r.passed
    assert any(says in f for f in r.failures), r.failures


def test_hint_and_solution_print(capsys):
    check.hint("ring_all_reduce")
    check.solution("ring_all_reduce")
    out = capsys.readouterr().out
    assert "reduce-scatter" in out and "def ring_all_reduce" in out
    with pytest.raises(KeyError, match="exercises"):
        check.hint("nope")
