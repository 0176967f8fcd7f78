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


@pytest.mark.parametrize("fn", [row_bias_on_rank0, row_einsum_out_inplace, row_mean_times_p])
def test_row_parallel_accepts_other_correct_forwards(fn):
    res = cp.row_parallel_forward(fn, world_sizes=(1, 2, 3), verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (row_mean, r"mean.*op=\"sum\""),
    (row_result_dropped, r"its own partial sum.*return value"),
    (row_broadcast, r"broadcast.*one all-reduce"),
    (row_reduce_to_root, r"rank 1 returned None"),
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
