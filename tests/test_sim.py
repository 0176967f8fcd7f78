"""The sim engine: virtual clocks, determinism, deadlock and failure reports, the trace."""
import time

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm import CommError, DeadlockError, RankFailure, TimeoutError
from mlscale.comm import _sim_mail

NET = ms.NetworkModel(alpha=1e-5, beta=1e-9)


def test_ping_pong_clock_is_alpha_plus_n_beta():
    def prog(comm):
        x = np.zeros(1000, dtype=np.uint8)
        if comm.rank == 0:
            comm.send(x, 1)
            t_send = comm.clock
            comm.recv(1)
            return t_send, comm.clock
        comm.recv(0)
        t_recv = comm.clock
        comm.send(x, 0)
        return t_recv, comm.clock

    (t0s, t0r), (t1r, t1s) = ms.launch(prog, 2, network=NET)
    one_way = 1e-5 + 1000 * 1e-9
    assert t0s == pytest.approx(one_way) and t1r == pytest.approx(one_way)
    assert t0r == pytest.approx(2 * one_way) and t1s == pytest.approx(2 * one_way)


def test_compute_advances_only_the_virtual_clock_and_stragglers_are_slower():
    net = ms.NetworkModel(alpha=0, beta=0, speeds={2: 0.25}, flops=1e9)

    def prog(comm):
        comm.compute(seconds=0.5)
        comm.compute(flops=2e9)
        return comm.clock

    t = time.perf_counter()
    res = ms.launch(prog, 3, network=net)
    assert time.perf_counter() - t < 5.0  # 10 virtual seconds; nothing sleeps
    assert res[:2] == [pytest.approx(2.5), pytest.approx(2.5)]
    assert res[2] == pytest.approx(10.0)
    assert [s.label for s in res.trace.spans].count("compute") == 6


def chatter(comm):
    """Many messages, any-source receives and uneven compute: a program whose event
    order depends on timing."""
    rng = np.random.default_rng(comm.rank)
    total = np.zeros(4)
    for step in range(20):
        comm.compute(seconds=float(rng.uniform(0, 1e-4)))
        if comm.rank == 0:
            for _ in range(comm.world_size - 1):
                _, x = comm.recv_any(tag=1)
                total += x
        else:
            comm.send(rng.standard_normal(4), 0, tag=1)
        total = comm.all_reduce(total, algorithm="ring") / comm.world_size
    return total


def test_same_program_same_trace_same_bits():
    a = ms.launch(chatter, 5, network=NET)
    b = ms.launch(chatter, 5, network=NET)
    assert a.trace.messages == b.trace.messages
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
    assert a.clocks == b.clocks


def test_recv_any_takes_messages_in_arrival_order():
    def prog(comm):
        if comm.rank == 0:
            return [comm.recv_any()[0] for _ in range(3)]
        comm.compute(seconds={1: 5e-3, 2: 1e-3, 3: 3e-3}[comm.rank])
        comm.send(np.ones(1), 0)

    assert ms.launch(prog, 4, network=NET)[0] == [2, 3, 1]


def test_deadlock_is_reported_with_what_each_rank_waits_for():
    def prog(comm):
        comm.recv((comm.rank + 1) % 2, tag=3)

    t = time.perf_counter()
    with pytest.raises(DeadlockError) as e:
        ms.launch(prog, 2)
    assert time.perf_counter() - t < 10  # reported, not hung
    msg = str(e.value)
    assert "rank 0" in msg and "recv(src=1, tag=3)" in msg and "recv(src=0, tag=3)" in msg


def test_deadlock_when_a_rank_skips_a_collective():
    def prog(comm):
        if comm.rank != 2:
            comm.all_reduce(np.ones(3))

    with pytest.raises(DeadlockError, match=r"waiting for rank\(s\) \[2\]"):
        ms.launch(prog, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda c: c.all_reduce(np.ones(3 + c.rank)), "shape"),
        (lambda c: c.all_reduce(np.ones(3, dtype="f4" if c.rank else "f8")), "dtype"),
        (lambda c: c.all_reduce(np.ones(3), op="sum" if c.rank else "max"), "op"),
        (lambda c: c.all_reduce(np.ones(3), algorithm="ring" if c.rank else "tree"), "algorithm"),
        (lambda c: c.broadcast(np.ones(3), root=c.rank), "root"),
        (lambda c: c.all_reduce(np.ones(3), algorithm="butterfly"), "unknown all_reduce algorithm"),
        (lambda c: c.all_reduce(np.ones(3), op="avg"), "unknown reduction op"),
        (lambda c: c.send(np.ones(3), 7), "dst=7 is not a rank"),
        (lambda c: c.send(np.ones(3), 1 - c.rank, tag=-1), "tag=-1"),
        (lambda c: c.recv(1 - c.rank, out=np.zeros(4)) if c.rank else c.send(np.ones(3), 1), "out= is"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_hang(bad, match):
    with pytest.raises(CommError, match=match):
        ms.launch(bad, 2)


def test_a_ranks_exception_reaches_the_caller_with_the_rank():
    def prog(comm):
        comm.barrier()
        if comm.rank == 2:
            raise ValueError("bad batch")
        comm.recv(2)

    with pytest.raises(ValueError, match="bad batch") as e:
        ms.launch(prog, 4)
    assert e.value.rank == 2
    assert any("rank 2 of 4" in n for n in getattr(e.value, "__notes__", [])) or not hasattr(e.value, "add_note")


def test_a_dead_peer_gives_rank_failure_and_survivors_can_go_on():
    net = ms.NetworkModel(alpha=1e-5, beta=0, failures={1: 1e-3})

    def prog(comm):
        if comm.rank == 1:
            comm.compute(seconds=2e-3)  # dies at 1 ms, half way
            comm.send(np.ones(1), 0)
            return "unreachable"
        try:
            comm.recv(1)
        except RankFailure as e:
            return ("failed", e.failed_rank, comm.clock)

    res = ms.launch(prog, 2, network=net)
    assert res[0] == ("failed", 1, pytest.approx(1e-3))
    assert res[1] is None and res.failed == {1: pytest.approx(1e-3)}


def test_a_rank_dying_while_others_wait_in_a_collective():
    net = ms.NetworkModel(failures={0: 0.0})
    with pytest.raises(RankFailure):
        ms.launch(lambda c: c.all_reduce(np.ones(2), algorithm="ring"), 3, network=net)


def test_a_dropped_link_is_named_in_the_deadlock_report_and_timeouts_work():
    net = ms.NetworkModel(drops={(0, 1): 0.0})

    def prog(comm):
        if comm.rank == 0:
            comm.send(np.ones(2), 1)
        else:
            comm.recv(0)

    with pytest.raises(DeadlockError, match="dropped 1 message"):
        ms.launch(prog, 2, network=net)

    def prog_timeout(comm):
        if comm.rank == 0:
            comm.send(np.ones(2), 1)
            return None
        try:
            comm.recv(0, timeout=0.5)
        except TimeoutError:
            return comm.clock

    assert ms.launch(prog_timeout, 2, network=net)[1] == pytest.approx(0.5)


def test_send_copies_so_the_sender_may_reuse_its_buffer():
    def prog(comm):
        x = np.arange(4.0)
        if comm.rank == 0:
            req = comm.isend(x, 1)
            req.wait()
            x[:] = -1
            comm.send(x, 1)
            return None
        return comm.recv(0), comm.irecv(0).wait()

    a, b = ms.launch(prog, 2)[1]
    assert a.tolist() == [0, 1, 2, 3] and b.tolist() == [-1, -1, -1, -1]


def test_messages_between_a_pair_do_not_overtake():
    def prog(comm):
        if comm.rank == 0:
            for i in range(5):
                comm.send(np.full(1 + 1000 * (i % 2), i), 1)
            return None
        reqs = [comm.irecv(0) for _ in range(5)]
        return [int(r.wait()[0]) for r in reversed(reqs)][::-1]

    assert ms.launch(prog, 2, network=NET)[1] == [0, 1, 2, 3, 4]


def test_one_ingress_port_makes_the_server_link_the_bottleneck():
    n = 1_000_000
    net = ms.NetworkModel(alpha=1e-5, beta=1e-9)

    def prog(comm):
        if comm.rank == 0:
            for src in range(1, comm.world_size):
                comm.recv(src)
        else:
            comm.send(np.zeros(n, dtype=np.uint8), 0)
        return comm.clock

    res = ms.launch(prog, 5, network=net)
    assert res[0] == pytest.approx(4 * (1e-5 + n * 1e-9))


def test_per_link_costs():
    net = ms.NetworkModel(alpha=1e-6, beta=1e-9, links={(0, 1): (1e-3, 1e-6)})

    def prog(comm):
        if comm.rank == 0:
            comm.send(np.zeros(100, np.uint8), 1)
            comm.send(np.zeros(100, np.uint8), 2)
        else:
            comm.recv(0)
        return comm.clock

    res = ms.launch(prog, 3, network=net)
    assert res[1] == pytest.approx(1e-3 + 100e-6)
    assert res[2] == pytest.approx(1e-3 + 100e-6 + 1e-6 + 100e-9)


def test_split_makes_process_grids():
    def prog(comm):
        row = comm.split(color=comm.rank // 3, key=comm.rank)
        col = comm.split(color=comm.rank % 3)
        r = row.all_reduce(np.array([comm.rank]), algorithm="ring")
        c = col.all_reduce(np.array([comm.rank]), algorithm="tree")
        return row.rank, row.world_size, int(r[0]), col.world_size, int(c[0])

    res = ms.launch(prog, 6)
    assert res[4] == (1, 3, 3 + 4 + 5, 2, 1 + 4)
    assert res[0] == (0, 3, 0 + 1 + 2, 2, 0 + 3)


def test_256_ranks():
    def prog(comm):
        return comm.all_reduce(np.array([comm.rank], dtype=np.int64), algorithm="ring")

    t = time.perf_counter()
    res = ms.launch(prog, 256)
    assert all(int(x[0]) == 255 * 256 // 2 for x in res)
    assert len(res.trace) == 2 * 255 * 256
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_ring_bytes_per_rank_are_2_p_minus_1_over_p(p):
    n = 840 * 8

    def prog(comm):
        comm.all_reduce(np.ones(840), algorithm="ring")
        return comm.nbytes_sent

    res = ms.launch(prog, p)
    assert res.trace.per_rank_bytes("all_reduce/ring") == [2 * (p - 1) * n // p] * p
    assert list(res) == [2 * (p - 1) * n // p] * p


def test_launch_argument_errors():
    with pytest.raises(CommError, match="world_size"):
        ms.launch(lambda c: None, 0)
    with pytest.raises(CommError, match="unknown backend"):
        ms.launch(lambda c: None, 2, backend="gloo")
    with pytest.raises(CommError, match="network= models the simulated network"):
        ms.launch(lambda c: None, 2, backend="mpi", network=NET)
    with pytest.raises(ValueError, match="alpha"):
        ms.NetworkModel(alpha=-1)


def test_background_all_reduce_overlaps_compute():
    n = 1 << 17  # 1 MiB of float64 per rank
    net = ms.NetworkModel(alpha=1e-5, beta=1e-9)

    def overlapped(comm):
        x = np.full(n, float(comm.rank))
        req = comm.start(lambda c, v: c.all_reduce(v, algorithm="ring"), x)
        comm.compute(seconds=1e-3)  # e.g. the backward pass of the layers below
        return req.wait(), comm.clock

    def serial(comm):
        x = np.full(n, float(comm.rank))
        y = comm.all_reduce(x, algorithm="ring")
        comm.compute(seconds=1e-3)
        return y, comm.clock

    from mlscale.collectives import cost

    t_comm = cost.all_reduce("ring", 4, n * 8, 1e-5, 1e-9)
    a = ms.launch(overlapped, 4, network=net)
    b = ms.launch(serial, 4, network=net)
    for (ya, ta), (yb, tb) in zip(a, b):
        np.testing.assert_array_equal(ya, np.full(n, 6.0))
        assert tb == pytest.approx(t_comm + 1e-3)
        assert ta == pytest.approx(max(t_comm, 1e-3))


def test_stream_tasks_run_in_order_and_errors_surface():
    def prog(comm):
        reqs = [comm.start(lambda c, i: c.all_reduce(np.array([i + comm.rank])), i) for i in range(3)]
        return [int(r.wait()[0]) for r in reqs]

    assert ms.launch(prog, 3)[0] == [3, 6, 9]

    def bad(comm):
        comm.start(lambda c: c.all_reduce(np.ones(2 + c.rank))).wait()

    with pytest.raises(CommError, match="shape"):
        ms.launch(bad, 2)


def test_device_gpu_without_cupy_or_gpu_says_how_to_fix():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed here; the error path is for machines without it")
    except ImportError:
        pass
    with pytest.raises(ms.BackendUnavailable, match="device='gpu' needs CuPy"):
        ms.launch(lambda c: None, 2, device="gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["ring", "rabenseifner", "tree"])
def test_n_logical_gpus_on_one_device(algorithm):
    import cupy

    def prog(comm):
        x = cupy.arange(1001, dtype=cupy.float32) * (comm.rank + 1)
        y = comm.all_reduce(x, algorithm=algorithm)
        assert isinstance(y, cupy.ndarray) and comm.xp is cupy
        return cupy.asnumpy(y)

    for y in ms.launch(prog, 3, device="gpu"):
        np.testing.assert_allclose(y, np.arange(1001, dtype=np.float32) * 6, rtol=1e-6)


def exchange_blocking(comm, n):
    """Both ranks send first, then receive: fine for small messages, a deadlock for
    large ones under MPI (and under the sim's eager limit)."""
    other = 1 - comm.rank
    comm.send(np.zeros(n, np.uint8), other)
    return comm.recv(other).size


def test_send_send_deadlocks_above_the_eager_limit_like_mpi():
    assert ms.launch(exchange_blocking, 2, args=(1000,)) == [1000, 1000]
    with pytest.raises(DeadlockError, match="above the eager limit") as e:
        ms.launch(exchange_blocking, 2, args=(1 << 20,))
    assert "rank 0" in str(e.value) and "rank 1" in str(e.value)
    eager = ms.NetworkModel(eager_limit=None)
    assert ms.launch(exchange_blocking, 2, args=(1 << 20,), network=eager) == [1 << 20] * 2


def test_rendezvous_transfer_starts_when_the_receive_is_posted():
    net = ms.NetworkModel(alpha=1e-6, beta=1e-9, eager_limit=1024)

    def prog(comm, n):
        if comm.rank == 0:
            comm.send(np.zeros(n, np.uint8), 1)
            return comm.clock
        comm.compute(seconds=1e-3)  # the receiver is late
        comm.recv(0)
        return comm.clock

    small = ms.launch(prog, 2, args=(1000,), network=net)
    big = ms.launch(prog, 2, args=(4096,), network=net)
    assert small[0] == pytest.approx(1e-6 + 1000e-9)  # eager: the sender does not wait
    assert big[0] == pytest.approx(1e-3 + 1e-6 + 4096e-9)  # rendezvous: it waits for the recv
    assert big[1] == pytest.approx(big[0])
    # sendrecv and isend/irecv never deadlock, whatever the size
    ring = lambda c: c.sendrecv(np.zeros(1 << 20, np.uint8), 1 - c.rank, 1 - c.rank).size  # noqa: E731
    assert ms.launch(ring, 2, network=net) == [1 << 20] * 2


def test_a_started_task_result_is_freed_with_its_request():
    """comm.start's result lives in the Request once waited for, not in the simulator's task
    list: an FSDP prefetch's gathered layer is freed when the program drops it."""
    import gc
    import weakref

    def prog(comm):
        req = comm.start(lambda c: c.all_gather(np.arange(4.0)))
        got = req.wait()
        assert req.wait() is got  # waiting again gives the same array
        ref = weakref.ref(got)
        del got, req
        gc.collect()
        return ref() is None

    assert ms.launch(prog, 2) == [True, True]


def test_messages_are_posted_in_virtual_time_order_around_collectives(monkeypatch):
    """The sim engine posts every message in virtual-time order (that is what makes the
    ports' first-come order the modelled one). A collective's argument check must not
    hold a rank back from that: ranks at different virtual times, a ring exchange and a
    small all-reduce every step (D-PSGD's pattern, notebook 6)."""
    ready = []
    orig = _sim_mail.Mailboxes._transfer

    def spy(self, R, at, *args, **kw):
        ready.append(at)
        return orig(self, R, at, *args, **kw)

    monkeypatch.setattr(_sim_mail.Mailboxes, "_transfer", spy)

    def program(comm):
        rng = np.random.default_rng(comm.rank)
        x = np.ones(2000)
        p, r = comm.world_size, comm.rank
        for _ in range(6):
            comm.compute(float(rng.uniform(1e-4, 3e-3)))
            x = comm.sendrecv(x, (r + 1) % p, (r - 1) % p, tag=1) * 0.5 + x * 0.5
            comm.all_reduce(np.ones(1))
        return float(x[0])

    ms.launch(program, 16, network=ms.NetworkModel(alpha=1e-3, beta=1e-9))
    late = [i for i in range(1, len(ready)) if ready[i] < ready[i - 1]]
    assert len(ready) > 16 * 6 and not late, f"{len(late)} messages posted before earlier ones"
