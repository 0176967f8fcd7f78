"""The sim engine's memory and bookkeeping at scale (issue 9): mailboxes are forgotten
once drained, the GC thresholds are put back, the bench's cases check their answers."""
import gc

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.sim import Simulator


def _ar(comm):
    return float(comm.all_reduce(np.full(4, float(comm.rank)), algorithm="recursive_doubling")[0])


def test_drained_mailboxes_are_swept_so_memory_holds_only_what_is_in_flight():
    p = 512  # recursive doubling: every rank talks to 9 partners, 4,608 (src, dst) pairs
    sim = Simulator(p)
    assert sim.box_limit == 4 * p + 1024 < 9 * p
    res = sim.run(_ar, ())
    assert res == [p * (p - 1) / 2] * p
    assert len(sim.boxes) <= 4 * p + 1024  # swept at least once, never above the limit
    assert sim.by_dst is None  # the index by receiver is built only for a receive from any source


def test_a_sweep_keeps_every_message_and_posted_receive_in_flight():
    def fn(comm):
        p, r = comm.world_size, comm.rank
        reqs = [comm.irecv(s, tag=3) for s in range(p) if s != r]  # posted long before the sends
        for _ in range(3):  # enough collectives in between to force sweeps
            comm.all_reduce(np.ones(2), algorithm="recursive_doubling")
        for d in range(p):
            if d != r:
                comm.send(np.array([r * 1000 + d]), d, tag=3)
        return sorted(int(q.wait()[0]) for q in reqs)

    p = 64
    sim = Simulator(p)
    sim.box_limit = 8  # sweep often
    res = sim.run(fn, ())
    assert res == [sorted(s * 1000 + r for s in range(p) if s != r) for r in range(p)]


@pytest.mark.parametrize("fails", [False, True])
def test_the_gc_thresholds_are_put_back_after_a_run(fails):
    before = gc.get_threshold()

    def fn(comm):
        assert gc.get_threshold()[0] >= Simulator.GC_THRESHOLD[0]  # raised during the run
        if fails:
            raise ValueError("boom")
        return 1

    if fails:
        with pytest.raises(ValueError, match="boom"):
            ms.launch(fn, 2)
    else:
        assert ms.launch(fn, 2) == [1, 1]
    assert gc.get_threshold() == before


@pytest.mark.parametrize("kind, p, reps, msgs", [("ring", 8, 2, 2 * 2 * 7 * 8), ("allreduce", 16, 1, 16 * 4),
                                                 ("pingpong", 2, 50, 100), ("recursive_doubling", 2, 5, 10)])
def test_the_bench_cases_count_their_messages_and_check_their_sums(kind, p, reps, msgs):
    from mlscale.bench.sim import _case

    r = _case(kind, p, reps, True)
    assert r["msgs"] == msgs
    assert r["cpu"] > 0 and r["rss_mb"] > 0


def test_recv_any_after_many_boxes_were_swept_sees_every_sender():
    def fn(comm):
        p, r = comm.world_size, comm.rank
        for _ in range(2):
            comm.all_reduce(np.ones(2), algorithm="recursive_doubling")
        if r == 0:
            comm.compute(1.0)  # every message is there before rank 0 looks
            return sorted(comm.recv_any(tag=9)[0] for _ in range(p - 1))
        comm.compute(0.001 * (p - r))  # the highest rank sends first
        comm.send(np.array([r]), 0, tag=9)

    p = 32
    sim = Simulator(p)
    sim.box_limit = 8
    assert sim.run(fn, ())[0] == list(range(1, p))
