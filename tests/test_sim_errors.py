"""Issue 9 on the sim engine: errors name global ranks, collectives are numbered from #1."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError, DeadlockError, RankFailure


def test_a_deadlock_in_a_sub_communicator_names_the_global_rank_missing():
    def program(comm):
        sub = comm.split(comm.rank % 2)  # odd ranks: global 1, 3 (local 0, 1)
        if comm.rank == 3:
            return None  # global rank 3 skips the collective
        return sub.all_reduce(np.ones(2))

    with pytest.raises(DeadlockError) as e:
        ms.launch(program, 4)
    msg = str(e.value)
    assert "waiting for global rank(s) [3] (local rank(s) [1]" in msg
    assert "all_reduce #1 " in msg  # numbered on the sub-communicator, from 1


def test_a_death_in_a_sub_communicator_names_the_global_rank():
    def program(comm):
        sub = comm.split(comm.rank % 2)
        comm.compute(1.0)
        try:
            sub.all_reduce(np.ones(2))
        except RankFailure as err:
            return err.failed_rank, str(err)
        return "ok"

    res = ms.launch(program, 4, network=ms.NetworkModel(failures={3: 0.5}))
    failed, msg = res[1]
    # global rank 1 (local 0 of the odd ranks) meets the death in the all-reduce's first
    # message; both ranks are named by their global numbers
    assert failed == 3 and "global rank 1 sent to global rank 3 (in all_reduce" in msg and "which died" in msg
    assert res[0] == "ok" and res[2] == "ok"


def test_the_first_collective_is_number_1_as_on_mpi():
    def program(comm):
        return comm.all_reduce(np.ones(2 + comm.rank))

    with pytest.raises(CommError, match="collective #1 "):
        ms.launch(program, 2)


def test_the_argument_check_is_linear_in_the_world_size():
    """8192 ranks with the check on: the waiting ranks no longer each build the list of
    missing ranks (that was O(p^2): 10.8 s, 1.6 GB). The value is checked; time is not."""
    res = ms.launch(lambda comm: comm.all_reduce(np.ones(4, np.float32)), 2048, trace=False)
    assert all(float(r[0]) == 2048 for r in res)


def test_sys_exit_in_a_rank_is_an_error_naming_the_rank_and_code():
    def program(comm):
        if comm.rank == 1:
            raise SystemExit(3)
        return comm.rank

    with pytest.raises(CommError, match=r"rank 1 of 2 called sys.exit\(3\)"):
        ms.launch(program, 2)


@pytest.mark.parametrize("algorithm", [None, "naive", "tree", "ring", "recursive_doubling", "rabenseifner"])
@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 4)), np.zeros(8, np.int32)])
def test_a_wrong_out_is_an_error_for_every_all_reduce_algorithm(algorithm, bad):
    def program(comm):
        return comm.all_reduce(np.ones(8), algorithm=algorithm, out=bad.copy())

    with pytest.raises(CommError, match="out="):
        ms.launch(program, 3)


def test_a_right_out_is_filled_by_the_ring():
    def program(comm):
        out = np.empty(8)
        y = comm.all_reduce(np.full(8, comm.rank + 1.0), algorithm="ring", out=out)
        return y is out, out

    for same, out in ms.launch(program, 3):
        assert same and np.array_equal(out, np.full(8, 6.0))


@pytest.mark.parametrize("call, match", [
    (lambda c: c.all_reduce(np.ones(2), op=None), "unknown reduction op None"),
    (lambda c: c.reduce(np.ones(2), op=None), "unknown reduction op None"),
    (lambda c: c.broadcast(np.ones(2), root=None), "root=None is not a rank"),
    (lambda c: c.broadcast(np.ones(2), root=True), "root=True is not a rank"),
    (lambda c: c.send(np.ones(2), dst=True), "dst=True is not a rank"),
    (lambda c: c.scatter([np.ones(1)] * 2, root=True), "root=True is not a rank"),
])
def test_clear_errors_for_none_and_bools(call, match):
    with pytest.raises(CommError, match=match):
        ms.launch(call, 2)


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), "10"])
def test_a_bad_timeout_is_a_clear_error(timeout):
    with pytest.raises(CommError, match="timeout="):
        ms.launch(lambda c: None, 2, timeout=timeout)


def test_launch_timeout_ends_an_endless_simulation():
    def program(comm):  # an endless ping-pong
        while True:
            comm.sendrecv(np.ones(1), (comm.rank + 1) % 2, (comm.rank + 1) % 2)

    with pytest.raises(ms.comm.errors.TimeoutError, match=r"launch\(timeout=0.5\)"):
        ms.launch(program, 2, timeout=0.5, trace=False)
