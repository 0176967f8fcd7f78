"""Issue 9, part 4: bad sim inputs get a clear error naming the argument and the fix."""
import math

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError


def test_a_network_given_by_name_is_refused_with_how_to_build_one():
    with pytest.raises(CommError) as e:
        ms.launch(lambda comm: comm.rank, 2, network="fast")
    msg = str(e.value)
    assert "network='fast'" in msg and "NetworkModel.cluster" in msg


def test_a_network_model_still_runs():
    res = ms.launch(lambda comm: comm.all_reduce(np.ones(2)), 2, network=ms.NetworkModel(alpha=0.0))
    assert [list(r) for r in res] == [[2.0, 2.0], [2.0, 2.0]]


@pytest.mark.parametrize("bad", [-1, 1.5, "64k", True])
def test_a_bad_eager_limit_is_refused(bad):
    with pytest.raises(ValueError, match="eager_limit"):
        ms.NetworkModel(eager_limit=bad)


def test_eager_limit_zero_and_none_are_accepted():
    assert ms.NetworkModel(eager_limit=0).eager_limit == 0
    assert ms.NetworkModel(eager_limit=None).eager_limit is None


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma", "flops"])
def test_nan_costs_are_refused(name):
    with pytest.raises(ValueError, match=name):
        ms.NetworkModel(**{name: math.nan})


@pytest.mark.parametrize("kw", [{"seconds": math.nan}, {"seconds": -1.0}, {"seconds": math.inf},
                                {"seconds": "1"}, {"flops": -5}, {"flops": math.nan}])
def test_compute_refuses_nan_negative_and_non_numbers(kw):
    def program(comm):
        comm.compute(**kw)

    with pytest.raises(CommError) as e:
        ms.launch(program, 1)
    key = next(iter(kw))
    assert f"compute({key}=" in str(e.value) and "finite number >= 0" in str(e.value)


def test_compute_still_advances_the_clock():
    res = ms.launch(lambda comm: comm.compute(seconds=0.5, flops=1e10) or comm.clock, 1)
    assert res[0] == pytest.approx(1.5)


def _collective(name, x, out):
    def program(comm):
        return getattr(comm, name)(x, out=out)
    return program


@pytest.mark.parametrize("name", ["all_reduce", "reduce_scatter", "all_gather", "broadcast"])
@pytest.mark.parametrize("bad", [[0.0, 0.0], 3.0, np.float64(1.0)])
def test_out_that_is_not_an_array_is_refused_naming_the_collective(name, bad):
    with pytest.raises(CommError) as e:
        ms.launch(_collective(name, np.ones(2), bad), 2)
    assert f"{name}(out=...) must be an array" in str(e.value)


@pytest.mark.parametrize("name", ["all_reduce", "reduce_scatter", "all_gather", "broadcast"])
def test_read_only_out_is_refused(name):
    def program(comm):
        out = np.zeros({"all_gather": 4, "reduce_scatter": 1}.get(name, 2))
        out.flags.writeable = False
        return getattr(comm, name)(np.ones(2), out=out)

    with pytest.raises(CommError, match="read-only"):
        ms.launch(program, 2)


@pytest.mark.parametrize("name,n,want", [("all_reduce", 2, [2.0, 2.0]), ("reduce_scatter", 1, None),
                                         ("all_gather", 4, [1.0, 1.0, 1.0, 1.0]), ("broadcast", 2, [1.0, 1.0])])
def test_out_is_written_and_returned(name, n, want):
    def program(comm):
        out = np.full(n, -7.0)
        y = getattr(comm, name)(np.ones(2), out=out)
        return y is out, out.tolist()

    res = ms.launch(program, 2)
    for same, vals in res:
        assert same and vals == (want or [2.0])


@pytest.mark.parametrize("x", [np.array(["a", "b"]), np.array([b"a"]), np.array([object()], dtype=object),
                               np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_non_numeric_arrays_are_refused(x):
    with pytest.raises(CommError, match="must be a numeric array"):
        ms.launch(lambda comm: comm.all_reduce(x), 2)


@pytest.mark.parametrize("algorithm", ["naive", "tree", "ring", "recursive_doubling", "rabenseifner"])
def test_an_integer_sum_that_overflows_wraps_as_in_mpi(algorithm):
    res = ms.launch(lambda comm: comm.all_reduce(np.array([100, -100], dtype=np.int8), algorithm=algorithm), 3)
    want = (np.array([100, -100], dtype=np.int8) * np.int8(3))  # numpy wraps the same way: 300 mod 256
    for r in res:
        assert r.dtype == np.int8 and r.tolist() == want.tolist() == [44, -44]


def test_a_send_still_carries_a_string_array():
    def program(comm):
        if comm.rank == 0:
            comm.send(np.array(["ab", "c"]), 1)
            return None
        return comm.recv(0).tolist()

    assert ms.launch(program, 2)[1] == ["ab", "c"]
