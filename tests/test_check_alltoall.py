"""The pairwise all-to-all exercise (notebook 13): right answers written differently pass,
the usual mistakes fail with a verdict that names them."""
import re

import numpy as np
import pytest

from mlscale.check import pairwise_all_to_all


def irecv_first(comm, pieces):
    p, r = comm.world_size, comm.rank
    reqs = {s: comm.irecv(s, tag=7) for s in range(p) if s != r}
    for d in range(p):
        if d != r:
            comm.send(pieces[d], d, tag=7)
    got = [reqs[s].wait() if s != r else np.array(pieces[r]) for s in range(p)]
    return got


def isends_then_recvs(comm, pieces):
    p, r = comm.world_size, comm.rank
    sends = [comm.isend(pieces[(r + k) % p], (r + k) % p) for k in range(1, p)]
    got = [None] * p
    got[r] = pieces[r]
    for k in range(1, p):
        got[(r - k) % p] = comm.recv((r - k) % p)
    for s in sends:
        s.wait()
    return got


def blocking_send_then_recv(comm, pieces):
    p, r = comm.world_size, comm.rank
    got = [None] * p
    got[r] = pieces[r]
    for k in range(1, p):
        comm.send(pieces[(r + k) % p], (r + k) % p, tag=k)
        got[(r - k) % p] = comm.recv((r - k) % p, tag=k)
    return got


def stored_at_the_wrong_index(comm, pieces):
    p, r = comm.world_size, comm.rank
    got = [None] * p
    got[r] = pieces[r]
    for k in range(1, p):
        dst, src = (r + k) % p, (r - k) % p
        got[dst] = comm.sendrecv(pieces[dst], dst, src, tag=k)
    return got


def own_piece_on_the_wire(comm, pieces):
    p, r = comm.world_size, comm.rank
    reqs = [comm.irecv(s, tag=1) for s in range(p)]
    for d in range(p):
        comm.send(pieces[d], d, tag=1)
    return [q.wait() for q in reqs]


def kept_my_own(comm, pieces):
    p, r = comm.world_size, comm.rank
    for k in range(1, p):
        comm.sendrecv(pieces[(r + k) % p], (r + k) % p, (r - k) % p, tag=k)
    return list(pieces)


def the_collective(comm, pieces):
    return list(comm.all_to_all(pieces))


@pytest.mark.parametrize("fn", [irecv_first, isends_then_recvs])
def test_right_answers_written_differently_pass(fn):
    res = pairwise_all_to_all(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, says", [
    (blocking_send_then_recv, r"deadlock.*sendrecv"),
    (stored_at_the_wrong_index, r"store it in got\[\(r - k\) % p\]"),
    (own_piece_on_the_wire, r"own piece never goes on the wire"),
    (kept_my_own, r"you kept your own pieces"),
    (the_collective, r"no collective|write it on send/recv"),
])
def test_mistakes_are_named(fn, says):
    res = pairwise_all_to_all(fn, verbose=False)
    assert not res.passed
    assert re.search(says, res.summary(), re.S), res.summary()


def test_a_stub_is_not_implemented():
    def stub(comm, pieces):
        raise NotImplementedError

    res = pairwise_all_to_all(stub, verbose=False)
    assert res.not_implemented and not res.passed
