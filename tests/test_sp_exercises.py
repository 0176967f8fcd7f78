"""The notebook-12 checkers (mlscale/check/transformer.py) pass the reference solutions
and catch the usual mistakes with a message that says what is wrong."""
import numpy as np

from mlscale import check
from mlscale.check.transformer import mesh_coordinates_solution, sp_reduce_scatter_solution


def test_solutions_pass():
    assert check.mesh_coordinates(mesh_coordinates_solution, verbose=False).passed
    assert check.sp_reduce_scatter(sp_reduce_scatter_solution, verbose=False).passed


def test_mesh_mistakes_are_caught():
    def column_major(rank, sizes):  # first dim fastest: the other convention
        out = []
        for n in sizes:
            out.append(rank % n)
            rank //= n
        return tuple(out)

    res = check.mesh_coordinates(column_major, verbose=False)
    assert not res.passed and "last dimension varies fastest" in res.failures[0]

    def stub(rank, sizes):
        raise NotImplementedError

    assert check.mesh_coordinates(stub, verbose=False).not_implemented


def test_sp_mistakes_are_caught():
    def all_reduce_then_slice(comm, partial):  # right values, twice the bytes kept, wrong collective
        s = partial.shape[1] // comm.world_size
        return comm.all_reduce(partial)[:, comm.rank * s:(comm.rank + 1) * s]

    res = check.sp_reduce_scatter(all_reduce_then_slice, verbose=False)
    assert not res.passed and "exactly one reduce_scatter" in res.failures[0]

    def flat_chunks(comm, partial):  # forgets to move the sequence first: chunks are not tokens
        b, s, d = partial.shape
        return comm.reduce_scatter(np.ascontiguousarray(partial).reshape(-1)).reshape(b, s // comm.world_size, d)

    res = check.sp_reduce_scatter(flat_chunks, verbose=False)
    assert not res.passed and "whole tokens" in res.failures[0]
    assert "reduce_scatter" in check.core.HINTS["sp_reduce_scatter"]
