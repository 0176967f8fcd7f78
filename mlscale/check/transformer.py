"""Checkers for the transformers-at-scale exercises (notebook 12).

1. ``mesh_coordinates(fn)``: the learner writes ``fn(rank, sizes) -> coords``, the
   coordinates of a rank on a row-major (dp, pp, tp) mesh (last dim fastest, as
   ``torch.distributed.init_device_mesh`` and ``mlscale.parallel.mesh_coords`` number
   it), checked on every rank of several meshes, 1-D to 4-D, sizes 1 included.
2. ``sp_reduce_scatter(fn)``: the learner writes Megatron SP's g-bar for one sub-block
   (Korthikanti et al. 2022, section 4.2.2),

       def fn(comm, partial):   # partial (batch, seq, d): this rank's partial sum
           ...                  # -> (batch, seq / t, d): MY tokens of the sum over ranks

   checked on 1, 2, 3 and 4 simulated ranks against the sum computed in one process,
   with exactly one reduce-scatter and no other collective (the all-reduce of plain
   tensor parallelism moves the same bytes but leaves every token on every rank).
"""
from __future__ import annotations

import numpy as np

from ..comm import launch
from ..parallel.three_d import mesh_coords
from .core import CheckResult, register, try_case
from .parallel import _CountingComm

MESH_HINT = """\
Row-major, last dimension fastest: peel the sizes off from the END, like digits of a
number written in mixed radix (tp is the ones digit):
    coords = []
    for n in reversed(sizes):
        coords.append(rank % n)
        rank //= n
    return tuple(reversed(coords))
So on (dp, pp, tp) = (2, 2, 2), rank 5 = 1*4 + 0*2 + 1 is at (1, 0, 1).
Still stuck? from mlscale.check import solution; solution("mesh_coordinates")"""

SP_HINT = """\
comm.reduce_scatter(x) sums x over the ranks and gives rank r chunk r of the FLATTENED
result (np.array_split). Chunks must be whole tokens: move the sequence to the front,
(seq, batch, d), so that the first seq/t rows are rank 0's tokens:
    s_first = np.ascontiguousarray(partial.swapaxes(0, 1))      # (seq, batch, d)
    mine = comm.reduce_scatter(s_first.reshape(-1), op="sum")   # my seq/t tokens, flat
    b, s, d = partial.shape
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)
Still stuck? from mlscale.check import solution; solution("sp_reduce_scatter")"""


def mesh_coordinates_solution(rank, sizes):
    """Row-major coordinates of ``rank`` on a mesh of ``sizes`` (last dim fastest)."""
    coords = []
    for n in reversed(sizes):
        coords.append(rank % n)
        rank //= n
    return tuple(reversed(coords))


def sp_reduce_scatter_solution(comm, partial):
    """g-bar of sequence parallelism: sum the partial outputs, keep my tokens."""
    b, s, d = partial.shape
    s_first = np.ascontiguousarray(partial.swapaxes(0, 1))  # (seq, batch, d): tokens are whole chunks
    mine = comm.reduce_scatter(s_first.reshape(-1), op="sum")  # my seq/t tokens of the sum, flat
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)  # (batch, seq/t, d)


MESHES = ((8,), (2, 4), (4, 2), (2, 2, 2), (1, 2, 3), (3, 1, 2), (2, 3, 1, 2))


def mesh_coordinates(fn, verbose=True):
    """Check ``fn(rank, sizes) -> coords`` on every rank of several meshes."""
    res = CheckResult("mesh_coordinates")
    for sizes in MESHES:
        n = int(np.prod(sizes))
        want = [mesh_coords(r, sizes) for r in range(n)]

        def judge(got, sizes=sizes, want=want):
            return _judge_mesh(got, sizes, want)

        if not try_case(res, f"sizes={sizes}", lambda sizes=sizes, n=n: [fn(r, sizes) for r in range(n)], judge):
            return res.done(verbose)
    return res.done(verbose)


def _column_major(rank, sizes):
    out = []
    for n in sizes:
        out.append(rank % n)
        rank //= n
    return tuple(out)


def _judge_mesh(got, sizes, want):
    """The first wrong rank, and which usual mistake the whole mesh's answers show."""
    k = len(sizes)
    ints = []
    for r, g in enumerate(got):
        if g is None:
            return f"rank {r}: returned None; return a tuple of {k} coordinates"
        try:
            ints.append(tuple(int(c) for c in g))
        except (TypeError, ValueError):
            return f"rank {r}: returned {g!r}; return a tuple of {k} integer coordinates"
        if len(ints[-1]) != k:
            return f"rank {r}: returned {len(ints[-1])} coordinates, expected {k} (one per dimension of {sizes})"
    if ints == want:
        return None
    r = next(i for i, (g, w) in enumerate(zip(ints, want)) if g != w)
    why = "row-major: the last dimension varies fastest"
    if ints == [w[::-1] for w in want]:
        why = "the right coordinates in reverse order: peeling sizes off from the end, reverse the list at the end"
    elif ints == [_column_major(i, sizes) for i in range(len(ints))]:
        why = "the first dimension varies fastest (column-major); row-major: the last dimension varies fastest"
    elif ints == [tuple(i % n for n in sizes) for i in range(len(ints))] or \
            ints == [tuple(i % n for n in reversed(sizes))[::-1] for i in range(len(ints))]:
        why = "each coordinate is rank % n of the whole rank: divide (rank //= n) after taking each digit"
    elif any(not 0 <= c < n for g in ints for c, n in zip(g, sizes)):
        why = "a coordinate outside 0..size-1 of its dimension"
    return f"rank {r}: got {ints[r]}, expected {want[r]} ({why})"


def sp_reduce_scatter(fn, world_sizes=(1, 2, 3, 4), verbose=True):
    """Check ``fn(comm, partial) -> my tokens of the sum`` with one reduce-scatter."""
    res = CheckResult("sp_reduce_scatter")
    for t in world_sizes:
        for b, s, d in ((2, 4 * t, 3), (1, t, 5), (3, 2 * t, 1)):
            rng = np.random.default_rng(100 * t + s + d)
            parts = rng.standard_normal((t, b, s, d))
            total = parts.sum(axis=0)

            def prog(comm, parts=parts):
                counted = _CountingComm(comm)
                return fn(counted, parts[comm.rank].copy()), counted.calls

            def judge(out, total=total, t=t, s=s):
                n = s // t
                calls = out[0][1]  # the collectives first: a wrong one explains wrong values too
                if {k: v for k, v in calls.items() if k != "reduce_scatter"}:
                    return f"called {calls}: g-bar needs exactly one reduce_scatter and nothing else"
                if calls.get("reduce_scatter", 0) != 1:
                    return f"called reduce_scatter {calls.get('reduce_scatter', 0)} times; exactly one is needed"
                for r, (y, _) in enumerate(out):
                    if y is None:
                        return f"rank {r} returned None: return my tokens of the sum, (batch, seq/t, d)"
                    y = np.asarray(y)
                    want = total[:, r * n:(r + 1) * n]
                    if y.shape != want.shape:
                        swapped = y.shape == (n, b, d) and (n, b) != (b, n)
                        return (f"rank {r}: shape {y.shape}, expected {want.shape} (batch, seq/t = {n}, d)"
                                + (": that is (seq/t, batch, d); swap the axes back, .swapaxes(0, 1)"
                                   if swapped else ""))
                    if not np.allclose(y, want, rtol=1e-10, atol=1e-10):
                        if np.allclose(y * t, want, rtol=1e-10, atol=1e-10):
                            return (f"rank {r}: the mean of the partial outputs (the sum / {t}): "
                                    f"g-bar sums them, op=\"sum\"")
                        if np.allclose(y.reshape(-1), want.swapaxes(0, 1).reshape(-1), rtol=1e-10, atol=1e-10):
                            return (f"rank {r}: the right numbers in the wrong layout: the (seq/t, batch, d) "
                                    f"result was reshaped to (batch, seq/t, d); swap the axes, .swapaxes(0, 1)")
                        return (f"rank {r}: wrong values (max error {np.abs(y - want).max():.3g}); are the chunks "
                                f"whole tokens, tokens {r * n}:{(r + 1) * n} of the sum?")
                return None

            if not try_case(res, f"t={t}, partial ({b}, {s}, {d})", lambda t=t, prog=prog: launch(prog, t), judge):
                return res.done(verbose)
    return res.done(verbose)


register("mesh_coordinates", MESH_HINT, mesh_coordinates_solution)
register("sp_reduce_scatter", SP_HINT, sp_reduce_scatter_solution)

__all__ = ["mesh_coordinates", "sp_reduce_scatter", "mesh_coordinates_solution", "sp_reduce_scatter_solution"]
