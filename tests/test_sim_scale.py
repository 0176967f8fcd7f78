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


def test_a_mailbox_is_forgotten_when_its_last_message_is_received():
    """Eager forgetting (issue 9 speed): above ``box_keep`` boxes a drained one is
    forgotten at once, so the table never grows past it and no sweep is needed; the
    same messages arrive."""
    p = 512  # 4,608 (src, dst) pairs, one message each
    sim = Simulator(p)
    sim.box_limit = 10 ** 9  # no sweep: only eager forgetting can keep the table small
    assert sim.run(_ar, ()) == [p * (p - 1) / 2] * p
    assert len(sim.boxes) <= sim.box_keep == 2 * p + 64
    assert len(sim.trace.messages) == p * 9  # lg 512 = 9 rounds, a message per rank each


@pytest.mark.parametrize("keep", [64, 0])
def test_a_mailbox_with_something_in_flight_is_kept(keep):
    """With few boxes a drained one is kept for its next message; above ``box_keep`` it
    is forgotten and the next message starts a new one at 0. Either way a box with a
    message or a posted receive in flight stays."""
    def fn(comm):
        if comm.rank == 0:
            comm.send(np.ones(2), 1, tag=1)
            comm.send(np.ones(2), 1, tag=1)  # the second is never received
        else:
            comm.recv(0, tag=1)
            comm.irecv(0, tag=2)  # posted, never matched
        return None

    sim = Simulator(2)
    sim.box_keep = keep
    sim.run(fn, ())
    box = sim.boxes[((), 0, 1, 1)]
    # rank 1 received the first message before the second was sent (rank 0 yields to it:
    # it is behind in virtual time), which drained the box
    want = (2, 1, [1]) if keep else (1, 0, [0])
    assert (box.nsent, box.nposted, sorted(box.msgs)) == want
    assert sim.boxes[((), 0, 1, 2)].posted_at == {0: 10e-6 + 16e-9}  # posted after the first arrived
    assert len(sim.boxes) == 2


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


def test_the_frontier_case_simulates_every_rank():
    """bench sim's frontier row (--quick size): every rank simulated, the step beside predict's."""
    from mlscale.bench.sim import _case

    r = _case("frontier-quick", 0, 1, True)
    assert r["ranks"] == 2 * 4 * 8 and r["mesh"] == [2, 4, 8]
    assert r["events"] > r["ranks"] * 2 * 32  # every rank: its schedule's ops and messages
    assert r["step"] == pytest.approx(r["predicted"], rel=0.05)
