"""out= for reduce, gather and scatter (issue 9): written into, returned, checked; a bad
out= is a clear error before any message moves."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError


def _rooted(comm):
    p, r = comm.world_size, comm.rank
    x = np.arange(4.0) + r
    buf = np.full(4, -1.0)
    red = comm.reduce(x, root=p - 1, out=buf)
    g = np.full((p, 4), -1.0)
    gat = comm.gather(x, root=0, out=g)
    piece = np.full(2, -1.0)
    sc = comm.scatter([np.array([i, 10.0 * i]) for i in range(p)] if r == 0 else None, root=0, out=piece)
    return (red is buf, buf.copy(), gat is g, g.copy(), sc is piece, piece.copy())


@pytest.mark.parametrize("p, backend", [(1, "sim"), (2, "sim"), (3, "sim"), (5, "sim"),
                                        pytest.param(3, "mpi", marks=pytest.mark.mpi)])
def test_reduce_gather_scatter_write_into_out(p, backend):
    if backend == "mpi":
        from _mpi_batch import require_mpi
        require_mpi()
    res = ms.launch(_rooted, p, backend=backend)
    total = sum(np.arange(4.0) + r for r in range(p))
    for r, (red_is, buf, gat_is, g, sc_is, piece) in enumerate(res):
        if r == p - 1:
            assert red_is and np.array_equal(buf, total)
        else:  # MPI's recvbuf: only the root's is written
            assert np.array_equal(buf, np.full(4, -1.0))
        if r == 0:
            assert gat_is and np.array_equal(g, np.stack([np.arange(4.0) + q for q in range(p)]))
        else:
            assert np.array_equal(g, np.full((p, 4), -1.0))
        assert sc_is and np.array_equal(piece, [r, 10.0 * r])


@pytest.mark.parametrize("call, says", [
    (lambda c: c.reduce(np.ones(3), out=np.zeros(4)), r"out= has shape \(4,\)"),
    (lambda c: c.reduce(np.ones(3), out=[0, 0, 0]), r"reduce\(out=...\) must be an array"),
    (lambda c: c.gather(np.ones(3), out=np.zeros((2, 4))), r"out= must be \(2, 3\)"),
    (lambda c: c.gather(np.ones(c.rank + 1), out=np.zeros((2, 1))), r"every rank's x the same shape"),
    (lambda c: c.scatter([np.ones(2), np.ones(2)] if c.rank == 0 else None, out=np.zeros(2, np.float32)),
     r"the result is \(2,\) float64"),
])
def test_a_bad_out_is_a_clear_error(call, says):
    with pytest.raises(CommError, match=says):
        ms.launch(call, 2)
