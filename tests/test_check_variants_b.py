"""Issue 8: the checkers of gpipe_schedule, row_parallel_forward, mesh_coordinates,
sp_reduce_scatter and ssp_admission accept correct answers written differently from the
reference, and reject plausible mistakes with a message that names the mistake."""
import math
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


# ------------------------------------------------------------------ row_parallel_forward
def row_bias_on_rank0(comm, x_shard, w_shard, bias):  # the bias enters the sum once, from rank 0
    partial = np.dot(x_shard, w_shard)
    if comm.rank == 0:
        partial = partial + bias
    return comm.all_reduce(partial, op="sum", algorithm="ring")


def row_einsum_out_inplace(comm, x_shard, w_shard, bias):  # einsum, out= and += in place
    partial = np.einsum("bi,io->bo", x_shard, w_shard)
    y = np.empty_like(partial)
    comm.all_reduce(partial, out=y)
    y += bias
    return y


def row_mean_times_p(comm, x_shard, w_shard, bias):  # the mean, multiplied back
    return comm.all_reduce(x_shard @ w_shard, op="mean") * comm.world_size + bias


def row_out_is_input(comm, x_shard, w_shard, bias):  # out= the partial itself: written back in place
    partial = x_shard @ w_shard
    comm.all_reduce(partial, op="sum", out=partial)
    return partial + bias


def row_bias_split(comm, x_shard, w_shard, bias):  # b / p from every rank sums to b once
    return comm.all_reduce(x_shard @ w_shard + bias / comm.world_size, algorithm="tree")


def row_mean(comm, x_shard, w_shard, bias):  # averages instead of summing
    return comm.all_reduce(x_shard @ w_shard, op="mean") + bias


def row_result_dropped(comm, x_shard, w_shard, bias):  # all_reduce returns the sum; the input is unchanged
    partial = x_shard @ w_shard
    comm.all_reduce(partial)
    return partial + bias


def row_broadcast(comm, x_shard, w_shard, bias):  # rank 0's partial sum to everyone
    return comm.broadcast(x_shard @ w_shard, root=0) + bias


def row_reduce_to_root(comm, x_shard, w_shard, bias):  # the sum on rank 0 only
    y = comm.reduce(x_shard @ w_shard, root=0)
    return None if y is None else y + bias


@pytest.mark.parametrize("fn", [row_bias_on_rank0, row_einsum_out_inplace, row_mean_times_p,
                                row_out_is_input, row_bias_split])
def test_row_parallel_accepts_other_correct_forwards(fn):
    res = cp.row_parallel_forward(fn, world_sizes=(1, 2, 3), verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (row_mean, r"mean.*op=\"sum\""),
    (row_result_dropped, r"its own partial sum.*return value"),
    (row_broadcast, r"broadcast.*one all-reduce"),
    (row_reduce_to_root, r"called \{'reduce': 1\}.*one all-reduce"),
])
def test_row_parallel_rejects_mistakes_by_name(fn, words):
    res = cp.row_parallel_forward(fn, world_sizes=(1, 2, 3), verbose=False)
    assert not res.passed
    assert re.search(words, res.summary()), res.summary()


# ------------------------------------------------------------------ mesh_coordinates
def mesh_unravel(rank, sizes):
    return np.unravel_index(rank, sizes)


def mesh_strides(rank, sizes):  # stride of dim i = product of the sizes after it; a list
    return [(rank // math.prod(sizes[i + 1:])) % n for i, n in enumerate(sizes)]


def mesh_divmod_front(rank, sizes):  # divmod from the front, by the remaining volume
    coords, rest = [], math.prod(sizes)
    for n in sizes:
        rest //= n
        c, rank = divmod(rank, rest)
        coords.append(c)
    return tuple(coords)


def mesh_not_reversed(rank, sizes):  # peels from the end but forgets to reverse
    coords = []
    for n in reversed(sizes):
        coords.append(rank % n)
        rank //= n
    return tuple(coords)


def mesh_no_divide(rank, sizes):  # forgets rank //= n
    return tuple(rank % n for n in sizes)


def mesh_column_major(rank, sizes):  # first dimension fastest
    return tuple(np.unravel_index(rank, sizes, order="F"))


def mesh_too_few(rank, sizes):  # drops the first dimension
    return np.unravel_index(rank, sizes)[1:] if len(sizes) > 1 else (rank,)


@pytest.mark.parametrize("fn", [mesh_unravel, mesh_strides, mesh_divmod_front])
def test_mesh_accepts_other_correct_answers(fn):
    res = ct.mesh_coordinates(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (mesh_not_reversed, r"reverse order"),
    (mesh_no_divide, r"rank //= n|divide"),
    (mesh_column_major, r"first dimension varies fastest"),
    (mesh_too_few, r"1 coordinates?, expected 2"),
])
def test_mesh_rejects_mistakes_by_name(fn, words):
    res = ct.mesh_coordinates(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary()), res.summary()


# ------------------------------------------------------------------ sp_reduce_scatter
def sp_transpose_reshape(comm, partial):  # transpose + reshape (a copy made by reshape), ring
    b, s, d = partial.shape
    mine = comm.reduce_scatter(partial.transpose(1, 0, 2).reshape(-1), algorithm="ring")
    return np.transpose(mine.reshape(-1, b, d), (1, 0, 2))


def sp_moveaxis_out(comm, partial):  # moveaxis, out= buffer, default op
    b, s, d = partial.shape
    n = s // comm.world_size
    out = np.empty(n * b * d)
    comm.reduce_scatter(np.moveaxis(partial, 1, 0).copy().ravel(), out=out)
    return np.moveaxis(out.reshape(n, b, d), 0, 1)


def sp_unflattened(comm, partial):  # reduce_scatter flattens a 3-D array itself
    b, s, d = partial.shape
    mine = comm.reduce_scatter(np.ascontiguousarray(partial.swapaxes(0, 1)), op="sum")
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)


def sp_reduce_then_scatter(comm, partial):  # the same data, two collectives through rank 0
    b, s, d = partial.shape
    total = comm.reduce(np.ascontiguousarray(partial.swapaxes(0, 1)), root=0)
    n = s // comm.world_size
    chunks = [total[r * n:(r + 1) * n] for r in range(comm.world_size)] if comm.rank == 0 else None
    return comm.scatter(chunks, root=0).swapaxes(0, 1)


def sp_mean(comm, partial):  # averages the partial sums
    b, s, d = partial.shape
    mine = comm.reduce_scatter(np.ascontiguousarray(partial.swapaxes(0, 1)).reshape(-1), op="mean")
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)


def sp_not_swapped_back(comm, partial):  # returns (seq/t, batch, d)
    b, s, d = partial.shape
    mine = comm.reduce_scatter(np.ascontiguousarray(partial.swapaxes(0, 1)).reshape(-1))
    return mine.reshape(s // comm.world_size, b, d)


def sp_reshaped_back(comm, partial):  # reshape where a swap of axes is needed
    b, s, d = partial.shape
    mine = comm.reduce_scatter(np.ascontiguousarray(partial.swapaxes(0, 1)).reshape(-1))
    return mine.reshape(b, s // comm.world_size, d)


def sp_then_all_gather(comm, partial):  # reduce-scatter, then gathers everything back (plain TP)
    b, s, d = partial.shape
    mine = comm.reduce_scatter(np.ascontiguousarray(partial.swapaxes(0, 1)).reshape(-1))
    full = comm.all_gather(mine).reshape(s, b, d).swapaxes(0, 1)
    n = s // comm.world_size
    return full[:, comm.rank * n:(comm.rank + 1) * n]


@pytest.mark.parametrize("fn", [sp_transpose_reshape, sp_moveaxis_out, sp_unflattened])
def test_sp_accepts_other_correct_answers(fn):
    res = ct.sp_reduce_scatter(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (sp_mean, r"mean.*op=\"sum\""),
    (sp_not_swapped_back, r"\(seq/t, batch, d\).*swap"),
    (sp_reshaped_back, r"wrong layout.*swapaxes"),
    (sp_then_all_gather, r"all_gather.*exactly one reduce_scatter"),
    (sp_reduce_then_scatter, r"'reduce': 1, 'scatter': 1.*exactly one reduce_scatter"),
])
def test_sp_rejects_mistakes_by_name(fn, words):
    res = ct.sp_reduce_scatter(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary()), res.summary()


# ------------------------------------------------------------------ ssp_admission
def ssp_lag(clock, slowest, staleness):  # written as a lag bound, one expression
    return staleness is None or clock - slowest <= staleness


def ssp_numpy_negated(clock, slowest, staleness):  # "wait" first, then negated; a numpy bool
    if staleness is not None:
        must_wait = np.int64(slowest) < clock - staleness
        return not must_wait
    return True


def ssp_not_staleness(clock, slowest, staleness):  # `not staleness` is also true for s = 0
    if not staleness:
        return True
    return slowest >= clock - staleness


def ssp_swapped(clock, slowest, staleness):  # clock and slowest swapped in the bound
    return True if staleness is None else clock >= slowest - staleness


def ssp_no_return_async(clock, slowest, staleness):  # forgets the return for the async case
    if staleness is not None:
        return slowest >= clock - staleness


@pytest.mark.parametrize("fn", [ssp_lag, ssp_numpy_negated])
def test_ssp_accepts_other_correct_rules(fn):
    res = check_ps.ssp_admission(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (ssp_not_staleness, r"staleness=0.*too loose.*is None"),
    (ssp_swapped, r"too loose.*wrong way round"),
    (ssp_no_return_async, r"staleness=None\) returned None: return True or False"),
])
def test_ssp_rejects_mistakes_by_name(fn, words):
    res = check_ps.ssp_admission(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary()), res.summary()
