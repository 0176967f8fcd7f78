"""Issue 9: a launch(backend="mpi") that can no longer finish says so within seconds, naming
what each rank waits for, instead of waiting for the timeout (mlscale.comm._mpi_state)."""
import os
import time

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm import _mpi_state as S
from mlscale.comm.errors import CommError, DeadlockError


# ----------------------------------------------------------------- the boards, without MPI
def _board(tmp_path, r, what, peers, mode="all", waiting=True, ago=0.0):
    b = S.Board(str(tmp_path / f"state{r}"))
    b.enter(what, peers, mode)
    if not waiting:
        b.leave()
    else:  # pretend the wait began `ago` seconds ago
        seq, w, since, n = S._HEAD.unpack_from(b._m)
        b._m[: S._HEAD.size] = S._HEAD.pack(seq, w, since - ago, n)
    return b


def _finish(tmp_path, r):
    (tmp_path / f"rank{r}.pkl").write_bytes(b"x")


def test_board_round_trip_and_nesting(tmp_path):
    b = S.Board(str(tmp_path / "state0"))
    assert S.read(str(tmp_path / "state0")) is None  # nothing written yet
    b.enter("recv from rank 2 (tag 5)", [2])
    b.enter("inner wait", [1, 2, 3])  # nested: the outer call stays on the board
    seq, waiting, since, what, mode, peers = S.read(str(tmp_path / "state0"))
    assert (waiting, what, mode, peers) == (True, "recv from rank 2 (tag 5)", "all", [2])
    b.leave()
    assert S.read(str(tmp_path / "state0"))[1] is True
    b.leave()
    assert S.read(str(tmp_path / "state0"))[1] is False
    b.enter("barrier", [1, 2], "any")
    assert S.read(str(tmp_path / "state0"))[0] > seq  # a new wait, a new number


def test_watch_waits_on_a_returned_rank_only_after_the_grace(tmp_path):
    w = S.Watch(str(tmp_path), 3, grace=2.0)
    _finish(tmp_path, 0)
    _board(tmp_path, 1, "recv from rank 0 (tag 2)", [0], ago=1.0)
    _board(tmp_path, 2, "compute", [], waiting=False)
    assert w.check() is None  # 1 s < grace
    _board(tmp_path, 1, "recv from rank 0 (tag 2)", [0], ago=2.5)
    report = w.check()
    assert report.startswith("rank 1 has waited 2.5 s in recv from rank 0 (tag 2), on rank 0")
    assert "rank 0: had returned its result" in report
    assert "rank 2: running Python" in report


def test_watch_any_source_needs_every_sender_gone(tmp_path):
    w = S.Watch(str(tmp_path), 3, grace=1.0)
    _finish(tmp_path, 1)
    _board(tmp_path, 0, "recv from any rank", [1, 2], mode="any", ago=5)
    _board(tmp_path, 2, "work", [], waiting=False)
    assert w.check() is None  # rank 2 may still send
    _finish(tmp_path, 2)
    assert "on ranks 1, 2" in w.check()


def test_watch_everyone_waiting_on_each_other(tmp_path):
    w = S.Watch(str(tmp_path), 2, grace=1.0)
    _board(tmp_path, 0, "send to rank 1", [1], ago=2.0)
    _board(tmp_path, 1, "send to rank 0", [0], ago=2.0)
    assert w.check() is None  # 2 s < 3 x grace
    _board(tmp_path, 0, "send to rank 1", [1], ago=3.5)
    _board(tmp_path, 1, "send to rank 0", [0], ago=3.2)
    report = w.check()
    assert report.startswith("every rank still running has waited at least 3 s")
    assert "rank 0: waiting 3.5 s in send to rank 1" in report


def test_grace_setting(monkeypatch):
    monkeypatch.delenv(S.GRACE_ENV, raising=False)
    assert S.grace_seconds() == S.DEFAULT_GRACE
    monkeypatch.setenv(S.GRACE_ENV, "none")
    assert S.grace_seconds() is None
    monkeypatch.setenv(S.GRACE_ENV, "-2")
    with pytest.raises(CommError, match="MLSCALE_MPI_DEADLOCK='-2'"):
        S.grace_seconds()


# ----------------------------------------------------------------- real MPI launches
mpi = pytest.mark.mpi


def _require():
    from _mpi_batch import require_mpi

    return require_mpi()


def _early_return_collective(comm):
    if comm.rank == 0:
        return "done"
    comm.all_reduce(np.ones(3), algorithm="ring")


def _mismatched_tags(comm):
    if comm.rank == 0:
        comm.send(np.ones(2), 1, tag=1)
        return "sent"
    comm.recv(0, tag=2)


def _two_big_sends(comm):
    big = np.zeros(1 << 20)  # 8 MB: above any eager limit
    comm.send(big, 1 - comm.rank)
    comm.recv(1 - comm.rank)


def _sub_early_return(comm):
    sub = comm.split(comm.rank // 2)
    if comm.rank == 2:
        return "left"
    if comm.rank == 3:
        sub.recv(0, tag=7)
    return "ok"


@mpi
@pytest.mark.parametrize("fn, world, says", [
    (_early_return_collective, 3, ["argument check of all_reduce", "on rank 0, which had already returned"]),
    (_mismatched_tags, 2, ["rank 1 has waited", "recv from rank 0 (tag 2)", "on rank 0"]),
    (_two_big_sends, 2, ["every rank still running has waited at least 3 s", "send to rank 1", "send to rank 0"]),
    (_sub_early_return, 4, ["rank 3 has waited", "recv from rank 2 (tag 7)", "world ranks [2, 3]", "on rank 2"]),
])
def test_a_launch_that_cannot_finish_is_reported_in_seconds(monkeypatch, fn, world, says):
    _require()
    monkeypatch.setenv(S.GRACE_ENV, "1")
    t0 = time.perf_counter()
    with pytest.raises(DeadlockError) as e:
        ms.launch(fn, world, backend="mpi", timeout=60)
    took = time.perf_counter() - t0
    for s in says:
        assert s in str(e.value), (s, str(e.value))
    assert took < 30, f"the deadlock was reported after {took:.1f} s (timeout was 60 s)"


def _slow_peer(comm):
    if comm.rank == 0:
        time.sleep(2.5)  # computing, not waiting: the peer's wait is no deadlock
        comm.send(np.arange(3.0), 1)
        return 0
    return comm.recv(0).tolist()


@mpi
def test_a_slow_peer_is_not_a_deadlock(monkeypatch):
    _require()
    monkeypatch.setenv(S.GRACE_ENV, "1")
    assert ms.launch(_slow_peer, 2, backend="mpi", timeout=60) == [0, [0.0, 1.0, 2.0]]


def _ring_deadlock(comm):
    comm.recv((comm.rank + 1) % comm.world_size, tag=3)


@mpi
def test_a_timeout_says_what_each_rank_was_doing(monkeypatch):
    _require()
    monkeypatch.setenv(S.GRACE_ENV, "100")  # the boards are kept, the check never fires
    with pytest.raises(ms.TimeoutError) as e:
        ms.launch(_ring_deadlock, 3, backend="mpi", timeout=2)
    msg = str(e.value)
    for r in range(3):
        assert f"rank {r}: waiting" in msg and f"recv from rank {(r + 1) % 3} (tag 3)" in msg


@mpi
def test_with_the_check_off_a_timeout_still_ends_it(monkeypatch):
    _require()
    monkeypatch.setenv(S.GRACE_ENV, "none")
    with pytest.raises(ms.TimeoutError, match="timeout=1.5"):
        ms.launch(_mismatched_tags, 2, backend="mpi", timeout=1.5)
