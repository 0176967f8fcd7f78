"""The ``mpi`` engine on real processes: ``mpiexec`` with 2 to 4 ranks (oversubscribed
on 2 cores). Each mpiexec start costs about half a second, so every world size runs
ONE launch (``_batch``) that makes hundreds of checks section by section and returns
what it found; the tests below read their section of it.

Run alone: ``pytest -m mpi tests/test_mpi.py``.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import ALGORITHMS

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()

from test_collectives import assert_matches, rank_input, reference, run_collective_checks  # noqa: E402

WORLD_SIZES = [2, 3, 4]
#: every mlscale algorithm, the engine's own by name ("native") and by default (None)
ALGOS = {k: sorted(v) + ["native", None] for k, v in ALGORITHMS.items()}


# ---------------------------------------------------------------- sections, run on every rank
def _p2p(comm):
    """Point to point: inline (small) and two-message (large) paths, every dtype and
    shape, out=, isend/irecv, recv_any, timeouts. Asserts; returns the checks made."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    checks = 0
    for n in (0, 1, 7, 2048, 2049, 100_003):  # 2048 float32 = INLINE_BYTES, the edge
        for dtype in (np.float32, np.float64, np.int32, np.int8, np.complex64, np.bool_):
            x = (np.arange(n) + r).astype(dtype)
            y = comm.sendrecv(x, right, left, tag=n % 7)
            want = (np.arange(n) + left).astype(dtype)
            assert y.dtype == want.dtype and y.shape == want.shape, (n, dtype, y.dtype, y.shape)
            assert np.array_equal(y, want), (n, dtype)
            out = np.empty(n, dtype)
            z = comm.sendrecv(x, right, left, out=out)
            assert z is out and np.array_equal(out, want)
            checks += 2
    for shape in [(3, 4), (2, 3, 4, 5, 6, 1), (600, 30)]:  # n-d, both paths
        x = np.full(shape, r, np.float64)
        y = comm.sendrecv(x, right, left)
        assert y.shape == shape and np.all(y == left)
        checks += 1
    out = np.zeros((600, 60))[:, ::2]  # a non-contiguous out= is filled too
    comm.sendrecv(np.full((600, 30), r, np.float64), right, left, out=out)
    assert np.all(out == left)
    # blocking send/recv round the ring: even ranks send first, odd ranks receive first
    big = np.arange(300_000, dtype=np.float32) * (r + 1)
    if r % 2 == 0:
        comm.send(big, right, tag=1)
        got = comm.recv(left, tag=1)
    else:
        got = comm.recv(left, tag=1)
        comm.send(big, right, tag=1)
    np.testing.assert_array_equal(got, np.arange(300_000, dtype=np.float32) * (left + 1))
    # irecv, then a BLOCKING send of a large array, then wait: must not deadlock
    req = comm.irecv(left, tag=2)
    comm.send(big, right, tag=2)
    np.testing.assert_array_equal(req.wait(), np.arange(300_000, dtype=np.float32) * (left + 1))
    # tags are matched, not arrival order: send tag 5 then 6, receive 6 then 5
    comm.isend(np.array([5.0]), right, tag=5)
    s6 = comm.isend(np.full(50_000, 6.0), right, tag=6)
    six = comm.recv(left, tag=6)
    five = comm.recv(left, tag=5)
    s6.wait()
    assert six[0] == 6.0 and six.size == 50_000 and five[0] == 5.0
    # isend/irecv/test
    rq = comm.irecv(left, tag=7, out=np.empty(10, np.int64))
    sq = comm.isend(np.arange(10, dtype=np.int64) + r, right, tag=7)
    while not rq.test():
        time.sleep(1e-4)
    assert np.array_equal(rq.wait(), np.arange(10) + left)
    sq.wait()
    # recv_any: everyone reports to rank 0, small and large
    if r == 0:
        seen = {}
        for _ in range(2 * (p - 1)):
            src, arr = comm.recv_any(tag=9)
            seen.setdefault(src, []).append(arr)
        assert sorted(seen) == list(range(1, p))
        for src, arrs in seen.items():
            assert sorted(a.size for a in arrs) == [1, 40_000]
            assert all(np.all(a == src) for a in arrs)
        assert comm.recv(ms.ANY_SOURCE, tag=10).tolist() == [1]
    else:
        comm.send(np.array([r]), 0, tag=9)
        comm.send(np.full(40_000, r), 0, tag=9)
        if r == 1:
            comm.send(np.array([1]), 0, tag=10)
    # a timeout that fires, and a message that still arrives afterwards
    if r == 0:
        t0 = time.perf_counter()
        try:
            comm.recv(1, tag=11, timeout=0.2)
            raise AssertionError("recv(timeout=0.2) returned without a message")
        except ms.TimeoutError as e:
            assert "rank 1" in str(e) and time.perf_counter() - t0 < 5
    comm.barrier()
    if r == 1:
        comm.send(np.array([42]), 0, tag=11)
    if r == 0:
        assert comm.recv(1, tag=11, timeout=30)[0] == 42
    # bad peers and tags are refused before anything is sent
    for bad in (lambda: comm.send(np.ones(1), p), lambda: comm.send(np.ones(1), 0, tag=-1)):
        try:
            bad()
            raise AssertionError("a bad peer/tag was accepted")
        except ms.CommError:
            pass
    comm.barrier()
    return checks + 10


def _out_mismatch(comm):
    """recv(out=) that does not fit what was sent: CommError naming the source, both
    shapes and dtypes; the payload is drained, so both sides carry on."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    msgs = []
    for n, out in [(10, np.empty(11, np.float32)), (100_000, np.empty(100_000, np.float64)),
                   (5, np.empty((5, 1), np.float32))]:
        try:
            comm.sendrecv(np.zeros(n, np.float32), right, left, out=out)
            raise AssertionError("out= mismatch not detected")
        except ms.CommError as e:
            msgs.append(str(e))
    y = comm.sendrecv(np.full(3, r), right, left)  # the channel still works
    assert np.all(y == left)
    return msgs


def _large_collectives(comm):
    """Length 1000 (and 1001) for every algorithm, dtype and op; all_gather with ragged lengths."""
    p, r = comm.world_size, comm.rank
    checks = 0
    for n in (1000, 1001):
        for dtype in (np.float32, np.float64, np.int32):
            for op in ("sum", "mean", "max", "min", "prod"):
                x = rank_input(r, n, dtype, op)
                want = reference(p, n, dtype, op)
                for a in ALGOS["all_reduce"]:
                    assert_matches(comm.all_reduce(x, op=op, algorithm=a), want, dtype, f"all_reduce {a} {n} {op}")
                cut = np.array_split(np.arange(n), p)[r]
                for a in ALGOS["reduce_scatter"]:
                    assert_matches(comm.reduce_scatter(x, op=op, algorithm=a), want[cut], dtype, f"rs {a} {n} {op}")
                for a in ALGOS["reduce"]:
                    root = p - 1
                    got = comm.reduce(x, root=root, op=op, algorithm=a)
                    if r == root:
                        assert_matches(got, want, dtype, f"reduce {a} {n} {op}")
                    else:
                        assert got is None
                checks += len(ALGOS["all_reduce"]) + len(ALGOS["reduce_scatter"]) + len(ALGOS["reduce"])
            x2 = np.stack([rank_input(r, n + r, dtype, "sum")] * 2, axis=1)  # (n + r, 2), ragged
            full = np.concatenate([np.stack([rank_input(q, n + q, dtype, "sum")] * 2, axis=1) for q in range(p)])
            for a in ALGOS["all_gather"]:
                assert_matches(comm.all_gather(x2, algorithm=a), full, dtype, f"all_gather {a}")
            for a in ALGOS["broadcast"]:
                got = comm.broadcast(rank_input(r, n, dtype, "sum"), root=p - 1, algorithm=a)
                assert_matches(got, rank_input(p - 1, n, dtype, "sum"), dtype, f"broadcast {a}")
            for a in ALGOS["gather"]:
                got = comm.gather(rank_input(r, n + r, dtype, "sum"), root=p - 1, algorithm=a)
                if r == p - 1:
                    for q in range(p):
                        assert_matches(got[q], rank_input(q, n + q, dtype, "sum"), dtype, f"gather {a}")
            for a in ALGOS["scatter"]:
                xs = [rank_input(q, n + q, dtype, "sum") for q in range(p)] if r == 0 else None
                assert_matches(comm.scatter(xs, root=0, algorithm=a), rank_input(r, n + r, dtype, "sum"), dtype, a)
            checks += 5
    return checks


def _mismatch(comm):
    """Ranks passing different shapes, dtypes, algorithms or ops: CommError on EVERY
    rank (no hang, no wrong sum), and the communicator still works afterwards."""
    r = comm.rank
    found = []
    cases = [  # (what, call, words the message must hold)
        ("shape", lambda: comm.all_reduce(np.ones(4 + (r == 1), np.float32), algorithm="ring"), ["(4,)", "(5,)"]),
        ("dtype", lambda: comm.all_reduce(np.ones(4, np.float32 if r else np.float64)), ["<f4", "<f8"]),
        ("algorithm", lambda: comm.all_reduce(np.ones(4), algorithm="ring" if r else "tree"), ["ring", "tree"]),
        ("op", lambda: comm.reduce(np.ones(4), op="sum" if r else "max"), ["sum", "max"]),
        ("native shape", lambda: comm.all_reduce(np.ones(3 + r)), ["(3,)", "(4,)"]),
        ("all_gather rows", lambda: comm.all_gather(np.ones((2, 1 + (r == 1)))), ["1", "2"]),
    ]
    for what, call, words in cases:
        try:
            call()
            found.append((what, None, words))
        except ms.CommError as e:
            found.append((what, str(e), words))
    after = comm.all_reduce(np.ones(5), algorithm="ring")
    return found, after.tolist()


def _ring_bytes(comm):
    """Bytes each rank sends in the ring all-reduce: exactly 2(p-1)/p of the data
    (n divisible by p), within chunk rounding otherwise; 2(p-1) messages."""
    out = {}
    for n in (1200, 1000, 100_003):
        x = np.ones(n, np.float32)
        b0, m0 = comm.nbytes_sent, comm.messages_sent
        comm.all_reduce(x, algorithm="ring")
        out[n] = (comm.nbytes_sent - b0, comm.messages_sent - m0, x.nbytes)
    return out


def _misc(comm):
    """split, barrier, clock, ms.ANY_SOURCE constant, engine attributes."""
    p, r = comm.world_size, comm.rank
    sub = comm.split(r % 2, key=-r)  # reversed order inside each half
    members = [q for q in range(p) if q % 2 == r % 2]
    assert sub.world_size == len(members) and sub.rank == sorted(members, reverse=True).index(r)
    total = sub.all_reduce(np.array([r]), algorithm="ring")[0]
    assert total == sum(members)
    rest = comm.split(None if r == 0 else 1)  # color None: not a member (MPI_UNDEFINED)
    assert (rest is None) == (r == 0) and (rest is None or rest.world_size == p - 1)
    t0 = comm.clock
    comm.barrier()
    assert comm.clock >= t0 >= 0
    assert comm.backend == "mpi" and comm.xp is np and comm.prefers_out
    return True


SECTIONS = {
    "p2p": _p2p,
    "out_mismatch": _out_mismatch,
    "collectives": lambda comm: run_collective_checks(comm, ALGOS),
    "large_collectives": _large_collectives,
    "mismatch": _mismatch,
    "ring_bytes": _ring_bytes,
    "misc": _misc,
}


BATCHES = Batches(SECTIONS, timeout=120)
section = BATCHES.section
batch = BATCHES.batch


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("p", WORLD_SIZES)
def test_p2p_header_protocol(p):
    assert all(c > 70 for c in section(p, "p2p"))


# the assertions on what the sections returned (tests/test_torch.py makes them too)
def check_out_mismatch(values, p):
    for r, msgs in enumerate(values):
        left = (r - 1) % p
        assert all(f"from rank {left}" in m for m in msgs)
        assert "(10,)" in msgs[0] and "(11,)" in msgs[0]
        assert "float32" in msgs[1] and "float64" in msgs[1]
        assert "(5,)" in msgs[2] and "(5, 1)" in msgs[2]


def check_mismatch(values, p):
    for r, (found, after) in enumerate(values):
        for what, msg, words in found:
            assert msg is not None, f"rank {r}: mismatched {what} was not detected"
            assert f"rank {r} of {p}" in msg and " on rank" in msg and all(w in msg for w in words), msg
        assert after == [p] * 5


def check_ring_bytes(values, p):
    for counts in values:
        for n, (sent, msgs, nbytes) in counts.items():
            exact = 2 * (p - 1) / p * nbytes
            if n % p == 0:
                assert sent == exact, (n, sent, exact)
            else:
                assert abs(sent - exact) <= 2 * (p - 1) * 4, (n, sent, exact)
            assert msgs == 2 * (p - 1)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_recv_out_mismatch_names_source_shapes_dtypes(p):
    check_out_mismatch(section(p, "out_mismatch"), p)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_every_collective_every_algorithm_and_native(p):
    counts = section(p, "collectives")
    assert len(set(counts)) == 1 and counts[0] > 1000


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_collectives_length_1000(p):
    assert all(c > 200 for c in section(p, "large_collectives"))


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_mismatched_arguments_raise_on_every_rank(p):
    check_mismatch(section(p, "mismatch"), p)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_ring_sends_2_p_minus_1_over_p_of_the_data(p):
    check_ring_bytes(section(p, "ring_bytes"), p)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_split_barrier_clock(p):
    assert all(section(p, "misc"))


def test_suite_runs_one_launch_per_world_size_quickly():
    for p in WORLD_SIZES:
        batch(p)
    took = {p: round(BATCHES.took(p), 1) for p in WORLD_SIZES}
    assert sum(took.values()) < 90, took  # about 10 s on an idle 2-core machine


# ---------------------------------------------------------------- launching and failing
def _our_processes():
    """Live processes started by a launch from this test process (they carry our pid)."""
    mine = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != b"Z" and f"MLSCALE_LAUNCHER_PID={os.getpid()}".encode() in env.split(b"\0"):
            mine.append(int(name))
    return mine


def _raise_on_rank_2(comm):
    print(f"rank {comm.rank} starting")
    if comm.rank == 2:
        raise ValueError("rank two cannot go on")
    comm.recv(2)  # would wait forever without MPI_Abort


def test_rank_exception_is_reraised_with_the_rank_and_nothing_is_left(capsys):
    with pytest.raises(ValueError, match="rank two cannot go on") as info:
        ms.launch(_raise_on_rank_2, 4, backend="mpi", timeout=60)
    assert info.value.rank == 2
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "rank 2 of 4" in notes and "_raise_on_rank_2" in notes  # the rank's traceback
    out = capsys.readouterr().out
    assert "[0] rank 0 starting" in out and "[2] rank 2 starting" in out  # ranks' prints forwarded
    time.sleep(0.2)
    assert _our_processes() == []


def _deadlock(comm):
    comm.recv((comm.rank + 1) % comm.world_size)


def test_timeout_kills_every_process():
    t0 = time.perf_counter()
    with pytest.raises(ms.TimeoutError, match="timeout=1.5"):
        ms.launch(_deadlock, 3, backend="mpi", timeout=1.5)
    assert time.perf_counter() - t0 < 10
    time.sleep(0.2)
    assert _our_processes() == []


def _ctrl_c(signum, frame):
    raise KeyboardInterrupt


def test_keyboard_interrupt_kills_every_process():
    previous = signal.signal(signal.SIGALRM, _ctrl_c)  # Ctrl-C, 1.5 s into the run
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            ms.launch(_deadlock, 2, backend="mpi", timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(0.2)
    assert _our_processes() == []


def test_functions_from_a_notebook_travel_by_value():
    ns = {"__name__": "__notebook_cell__", "np": np}  # like a function typed in Jupyter
    exec("def prog(comm, k):\n    return comm.all_reduce(np.full(3, comm.rank * k), algorithm='ring')", ns)
    res = ms.launch(ns["prog"], 3, args=(10,), backend="mpi", timeout=60)
    assert res.backend == "mpi"
    assert [r.tolist() for r in res] == [[30, 30, 30]] * 3


def _startup(comm):
    return comm.rank


def test_startup_time_of_four_ranks():
    ms.launch(_startup, 4, backend="mpi")  # warm the file cache
    t0 = time.perf_counter()
    assert ms.launch(_startup, 4, backend="mpi") == [0, 1, 2, 3]
    took = time.perf_counter() - t0
    assert took < 5, f"starting 4 MPI ranks took {took:.2f} s (about 0.5 s expected)"


def test_unpicklable_args_and_bad_device_are_clear():
    import threading as th

    with pytest.raises(ms.CommError, match="cloudpickle"):
        ms.launch(_startup, 2, args=(th.Lock(),), backend="mpi")
    with pytest.raises(ms.CommError, match="nccl"):
        ms.launch(_startup, 2, backend="mpi", device="gpu")


# ---------------------------------------------------------------- scripts under mpiexec
SCRIPT = """
import sys
import numpy as np, mlscale as ms
comm = ms.comm.MPIComm()
total = comm.all_reduce(np.full(4, comm.rank), algorithm="ring")
sys.stdout.write("rank %d sum %d\\n" % (comm.rank, int(total[0])))  # one write: whole lines
sys.stdout.flush()
if comm.rank == {bad}:
    raise RuntimeError("rank {bad} gives up")
comm.barrier()
"""


def _run_script(tmp_path, bad):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT.format(bad=bad)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSCALE_MPI", "PMI_", "HYDRA_", "PYTHONUNBUFFERED"))}
    return subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(path)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_script_under_mpiexec(tmp_path):
    proc = _run_script(tmp_path, bad=-1)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n"))[1:] == [f"rank {r} sum 3" for r in range(3)]


def test_script_exception_aborts_all_ranks_instead_of_hanging(tmp_path):
    t0 = time.perf_counter()
    proc = _run_script(tmp_path, bad=1)
    assert proc.returncode != 0
    assert "rank 1 of 3 raised RuntimeError" in proc.stderr and "rank 1 gives up" in proc.stderr
    assert time.perf_counter() - t0 < 30


def test_missing_mpiexec_says_how_to_fix(monkeypatch):
    from mlscale.comm import _mpi_launch

    monkeypatch.setattr(_mpi_launch.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(_mpi_launch.shutil, "which", lambda name: None)
    with pytest.raises(ms.BackendUnavailable, match=r'pip install "mlscale\[mpi\]"'):
        ms.launch(_startup, 2, backend="mpi")


def test_import_mlscale_does_not_import_mpi4py():
    code = "import sys, mlscale, mlscale.comm.mpi; assert 'mpi4py' not in sys.modules, 'mpi4py imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _read_env(comm, name):
    return os.environ.get(name)


def test_mpiexec_args_reach_mpiexec():
    # e.g. ["-f", "hosts"] for a hostfile; here MPICH's -genv, which every rank sees
    res = ms.launch(_read_env, 2, args=("MLSCALE_TEST_VAR",), backend="mpi",
                    mpiexec_args=["-genv", "MLSCALE_TEST_VAR", "42"], timeout=60)
    assert list(res) == ["42", "42"]
