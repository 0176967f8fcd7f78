"""sim engine: launch(timeout=) stops a rank spinning or sleeping in Python (SIGALRM);
several failing ranks are all listed, the earliest in virtual time first; faults inside
collectives name the collective and algorithm; ANY_SOURCE takes the earliest arrival."""
import signal
import threading
import time

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError, DeadlockError, TimeoutError


def _spin(comm):
    if comm.rank == 1:
        while True:
            pass
    return comm.rank


def _sleep(comm):
    if comm.rank == 2:
        time.sleep(100)
    return comm.rank


@pytest.mark.parametrize("fn, rank", [(_spin, 1), (_sleep, 2)])
def test_timeout_stops_a_spinning_or_sleeping_rank(fn, rank):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        ms.launch(fn, 3, timeout=1)
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert f"rank {rank} was still running" in msg and "timeout=1" in msg
    assert ei.value.rank == rank


def test_previous_sigalrm_handler_and_timer_are_restored():
    fired = []

    def mine(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, mine)
    try:
        with pytest.raises(TimeoutError):
            ms.launch(_spin, 2, timeout=0.5)
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        # a timer armed before the launch goes on afterwards with what it had left
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert ms.launch(lambda c: c.rank, 2, timeout=5) == [0, 1]
        left, interval = signal.getitimer(signal.ITIMER_REAL)
        assert 20 < left <= 30 and interval == 0
        assert signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == []


def test_a_launch_in_time_leaves_no_timer_armed():
    def prog(comm):
        return comm.all_reduce(np.full(4, comm.rank + 1.0))

    before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    res = ms.launch(prog, 3, timeout=5)
    np.testing.assert_array_equal(res[0], np.full(4, 6.0))
    assert before == (signal.getsignal(signal.SIGALRM), (0.0, 0.0))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_off_the_main_thread_a_communicating_rank_still_times_out():
    def busy(comm):  # communicates, so the switch-time check sees the wall clock
        while True:
            comm.sendrecv(np.zeros(1), (comm.rank + 1) % 2, (comm.rank - 1) % 2)

    box = []
    th = threading.Thread(target=lambda: box.append(_catch(lambda: ms.launch(busy, 2, timeout=0.5))))
    th.start()
    th.join(20)
    assert not th.is_alive()
    assert isinstance(box[0], TimeoutError) and "timeout=0.5" in str(box[0])


def _catch(f):
    try:
        f()
    except BaseException as e:  # noqa: BLE001
        return e
    return None


class Boom(ValueError):
    pass


@pytest.mark.parametrize("late, early", [(1, 2), (2, 1)])
def test_several_failures_earliest_in_virtual_time_first(late, early):
    def prog(comm):
        if comm.rank == late:
            comm.compute(1.0)
            raise Boom(f"late failure on {comm.rank}")
        if comm.rank == early:
            raise KeyError(f"early failure on {comm.rank}")
        return comm.rank

    with pytest.raises(KeyError) as ei:
        ms.launch(prog, 4)
    assert ei.value.rank == early
    notes = "\n".join(getattr(ei.value, "__notes__", []))
    assert f"raised on rank {early} of 4" in notes
    assert f"rank {late} at t=1 s: Boom: late failure on {late}" in notes
    assert "t=0 s" in notes


def test_one_failure_has_no_list_of_others():
    def prog(comm):
        if comm.rank == 2:
            raise Boom("only me")
        return comm.rank

    with pytest.raises(Boom) as ei:
        ms.launch(prog, 3)
    assert ei.value.rank == 2
    assert not any("other ranks also raised" in n for n in ei.value.__notes__)


def test_sys_exit_among_failures_is_still_a_comm_error():
    def prog(comm):
        if comm.rank == 0:
            comm.compute(2.0)
            raise Boom("later")
        if comm.rank == 1:
            raise SystemExit(3)

    with pytest.raises(CommError, match=r"rank 1 of 2 called sys.exit\(3\)") as ei:
        ms.launch(prog, 2)
    assert "rank 0 at t=2 s: Boom: later" in "\n".join(ei.value.__notes__)


def _numbers(msg):
    import re

    return [int(n) for n in re.findall(r"\d+", msg)]


def test_deadlock_inside_a_ring_all_reduce_names_it_not_the_tag():
    def prog(comm):
        comm.check = False  # no agreement step: the ring's own messages deadlock
        comm.all_reduce(np.ones(8))
        comm.all_reduce(np.ones(8))
        if comm.rank != 2:
            comm.all_reduce(np.ones(8), algorithm="ring")

    with pytest.raises(DeadlockError) as ei:
        ms.launch(prog, 4)
    msg = str(ei.value)
    assert "rank 0 (t=" in msg and "waits in all_reduce #3 (algorithm='ring'): irecv(src=3).wait()" in msg
    assert "rank 2 finished" in msg
    assert max(_numbers(msg)) < 2 ** 20, msg


def test_a_rank_dying_inside_a_collective_names_the_collective():
    from mlscale.comm.errors import RankFailure
    from mlscale.comm.network import NetworkModel

    def prog(comm):
        return comm.all_reduce(np.ones(1 << 12), algorithm="ring")

    with pytest.raises(RankFailure) as ei:
        ms.launch(prog, 3, network=NetworkModel(failures={1: 1e-5}))
    msg = str(ei.value)
    assert "all_reduce #1 (algorithm='ring')" in msg and "rank 1 died" in msg
    assert max(_numbers(msg)) < 2 ** 20, msg


def test_user_tags_are_still_named_in_a_deadlock():
    def prog(comm):
        if comm.rank == 0:
            comm.recv(1, tag=5)

    with pytest.raises(DeadlockError, match=r"rank 0 .* waits in recv\(src=1, tag=5\)"):
        ms.launch(prog, 2)


def _any_source_earliest(comm):
    if comm.rank == 0:
        got = [comm.recv(ms.ANY_SOURCE) for _ in range(2)]
        src, last = comm.recv_any(tag=3)
        return [int(g[0]) for g in got] + [src, int(last[0])]
    if comm.rank == 1:
        comm.compute(0.01)  # rank 1's message arrives later in virtual time
    comm.send(np.full(2, comm.rank), 0)
    if comm.rank == 2:
        comm.send(np.full(1, 20), 0, tag=3)


def test_any_source_takes_the_earliest_arrival_in_virtual_time():
    assert ms.launch(_any_source_earliest, 3)[0] == [2, 1, 2, 20]


def test_any_source_ties_and_timeout():
    def prog(comm):
        if comm.rank == 0:
            first = comm.recv(ms.ANY_SOURCE, tag=1)  # both arrive at the same time: lowest rank
            comm.recv(ms.ANY_SOURCE, tag=1)
            with pytest.raises(TimeoutError, match="recv_any"):
                comm.recv(ms.ANY_SOURCE, tag=2, timeout=1.0)
            return int(first[0])
        comm.send(np.full(1, comm.rank), 0, tag=1)
        comm.compute(5.0)  # still running when rank 0's timeout (t=1 s) comes

    assert ms.launch(prog, 3)[0] == 1


def _any_source_ordered(comm):
    # one message can be in flight at a time, so the order is the same on every engine
    if comm.rank == 0:
        a = comm.recv(ms.ANY_SOURCE)
        comm.send(np.zeros(1), 1)
        src, b = comm.recv_any()
        return [int(a[0]), src, int(b[0])]
    if comm.rank == 1:
        comm.recv(0)
    comm.send(np.full(1, comm.rank + 10), 0)


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["sim", "mpi"])
def test_any_source_same_on_sim_and_mpi(backend):
    if backend == "mpi":
        pytest.importorskip("mpi4py")
        from mlscale.comm._mpi_launch import find_mpiexec

        try:
            find_mpiexec()
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"needs mpiexec ({e})")
    assert ms.launch(_any_source_ordered, 3, backend=backend, timeout=60)[0] == [12, 1, 11]
