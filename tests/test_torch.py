"""The ``torch`` engine (torch.distributed, gloo) on real processes: the collectives test
body of every engine, point to point, argument checks, bytes of the ring, split, faults,
and a script started by torchrun. Skipped where torch or mpiexec is missing. One launch
per world size runs every section (``_mpi_batch``)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import ALGORITHMS

pytestmark = pytest.mark.mpi
torch = pytest.importorskip("torch", reason='the torch engine needs PyTorch: pip install "mlscale[torch]"')

from _mpi_batch import Batches, require_mpi  # noqa: E402

require_mpi()

from test_collectives import run_collective_checks  # noqa: E402
from test_mpi import (_mismatch, _out_mismatch, _ring_bytes, check_mismatch, check_out_mismatch,  # noqa: E402
                      check_ring_bytes)

from mlscale.comm.torch_dist import _NATIVE  # noqa: E402

WORLD_SIZES = [2, 3, 4]
#: every mlscale algorithm, gloo's own by name where gloo has one, and the default (None)
ALGOS = {k: sorted(v) + (["native"] if k in _NATIVE else []) + [None] for k, v in ALGORITHMS.items()}


def _p2p(comm):
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    checks = 0
    for n in (0, 1, 7, 2049, 100_003):
        for dtype in (np.float32, np.float64, np.int32, np.int8, np.complex64, np.bool_):
            x = (np.arange(n) + r).astype(dtype)
            y = comm.sendrecv(x, right, left, tag=n % 7)
            want = (np.arange(n) + left).astype(dtype)
            assert y.dtype == want.dtype and y.shape == want.shape and np.array_equal(y, want), (n, dtype)
            out = np.empty(n, dtype)
            z = comm.sendrecv(x, right, left, out=out)
            assert z is out and np.array_equal(out, want)
            checks += 2
    for shape in [(3, 4), (2, 3, 4, 5, 6, 1), (600, 30), ()]:
        y = comm.sendrecv(np.full(shape, r, np.float64), right, left)
        assert y.shape == shape and np.all(y == left)
        checks += 1
    out = np.zeros((600, 60))[:, ::2]  # a non-contiguous out= is filled too
    comm.sendrecv(np.full((600, 30), r, np.float64), right, left, out=out)
    assert np.all(out == left)
    big = np.arange(300_000, dtype=np.float32) * (r + 1)
    if r % 2 == 0:  # blocking send/recv round the ring
        comm.send(big, right, tag=1)
        got = comm.recv(left, tag=1)
    else:
        got = comm.recv(left, tag=1)
        comm.send(big, right, tag=1)
    np.testing.assert_array_equal(got, np.arange(300_000, dtype=np.float32) * (left + 1))
    req = comm.irecv(left, tag=2)  # irecv, then a BLOCKING large send, then wait: no deadlock
    comm.send(big, right, tag=2)
    np.testing.assert_array_equal(req.wait(), np.arange(300_000, dtype=np.float32) * (left + 1))
    comm.isend(np.array([5.0]), right, tag=5)  # tags are matched, not arrival order
    s6 = comm.isend(np.full(50_000, 6.0), right, tag=6)
    six = comm.recv(left, tag=6)
    five = comm.recv(left, tag=5)
    s6.wait()
    assert six[0] == 6.0 and six.size == 50_000 and five[0] == 5.0
    reqs = [comm.irecv(left, tag=8) for _ in range(3)]  # same tag: in the order sent
    for k in range(3):
        comm.isend(np.full(1000 * (k + 1), float(k)), right, tag=8)
    for k, q in enumerate(reqs):
        a = q.wait()
        assert a.size == 1000 * (k + 1) and np.all(a == k)
    if r == 0:  # recv_any: everyone reports to rank 0
        seen = sorted(comm.recv_any(tag=9)[0] for _ in range(p - 1))
        assert seen == list(range(1, p))
    else:
        comm.send(np.full(40_000, r), 0, tag=9)
    comm.barrier()
    return checks + 6


def _misc(comm):
    p, r = comm.world_size, comm.rank
    sub = comm.split(r % 2, key=-r)  # reversed order inside each half
    members = [q for q in range(p) if q % 2 == r % 2]
    assert sub.world_size == len(members) and sub.rank == sorted(members, reverse=True).index(r)
    assert sub.all_reduce(np.array([r]), algorithm="ring")[0] == sum(members)
    assert sub.all_reduce(np.array([r]))[0] == sum(members)  # gloo's own, on the new group
    got = sub.all_gather(np.array([r]))
    assert got.tolist() == sorted(members, reverse=True)  # in the sub-communicator's rank order
    subsub = sub.split(0)  # a split of a split: only its members take part
    assert subsub.world_size == sub.world_size and subsub.all_reduce(np.array([1]))[0] == sub.world_size
    rest = comm.split(None if r == 0 else 1)
    assert (rest is None) == (r == 0) and (rest is None or rest.world_size == p - 1)
    t0 = comm.clock
    comm.barrier()
    assert comm.clock >= t0 >= 0
    assert comm.backend == "torch" and comm.xp is np
    return True


SECTIONS = {
    "p2p": _p2p,
    "out_mismatch": _out_mismatch,
    "collectives": lambda comm: run_collective_checks(comm, ALGOS),
    "mismatch": _mismatch,
    "ring_bytes": _ring_bytes,
    "misc": _misc,
}
BATCHES = Batches(SECTIONS, timeout=180, backend="torch")
section = BATCHES.section


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_every_collective_every_algorithm_and_gloo(p):
    counts = section(p, "collectives")
    assert len(set(counts)) == 1 and counts[0] > 1000


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_p2p_headers_tags_order_and_no_deadlock(p):
    assert all(c > 60 for c in section(p, "p2p"))


@pytest.mark.parametrize("p", [2, 3])
def test_recv_out_mismatch_names_source_shapes_dtypes(p):
    check_out_mismatch(section(p, "out_mismatch"), p)


@pytest.mark.parametrize("p", [2, 3])
def test_mismatched_arguments_raise_on_every_rank(p):
    check_mismatch(section(p, "mismatch"), p)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_ring_sends_2_p_minus_1_over_p_of_the_data(p):
    check_ring_bytes(section(p, "ring_bytes"), p)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_split_split_of_split_barrier_clock(p):
    assert all(section(p, "misc"))


def _fails_on_rank_1(comm):
    comm.barrier()
    if comm.rank == 1:
        raise ValueError("bad value on rank 1")
    comm.recv(1)  # would wait forever
    return comm.rank


def test_rank_exception_names_the_rank():
    with pytest.raises(ValueError, match="bad value on rank 1") as e:
        ms.launch(_fails_on_rank_1, 2, backend="torch", timeout=60)
    assert "rank 1" in "".join(getattr(e.value, "__notes__", [])) + str(e.value)


def _recv_from_finished(comm):
    if comm.rank == 0:
        return comm.recv(1, tag=3)  # rank 1 never sends
    return 1


def test_deadlock_on_a_finished_rank_is_reported_in_seconds():
    with pytest.raises(ms.DeadlockError, match=r"rank 0.*recv from rank 1 \(tag 3\)"):
        ms.launch(_recv_from_finished, 2, backend="torch", timeout=60)


def test_torchrun_script(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("no torchrun next to this python")
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import mlscale as ms
        comm = ms.comm.TorchComm()
        s = comm.all_reduce(np.arange(4.0) + comm.rank, algorithm="ring")
        t = comm.all_reduce(np.arange(4.0) + comm.rank)
        print(f"rank {comm.rank}/{comm.world_size}: {s.tolist()} {t.tolist()}", flush=True)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    out = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(script)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    for r in range(2):
        assert f"rank {r}/2: [1.0, 3.0, 5.0, 7.0] [1.0, 3.0, 5.0, 7.0]" in out.stdout


def test_without_torchrun_environment_the_error_says_how_to_start(monkeypatch):
    code = ("import os\nfor k in ('RANK','WORLD_SIZE','MASTER_ADDR','MASTER_PORT'): os.environ.pop(k, None)\n"
            "import mlscale as ms\ntry:\n    ms.comm.TorchComm()\nexcept ms.CommError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "torchrun" in out.stdout and "init_process_group" in out.stdout, out.stdout + out.stderr


def test_missing_torch_is_a_clear_error():
    code = ("import sys\nsys.modules['torch'] = None\nimport mlscale as ms, numpy as np\n"
            "try:\n    ms.launch(lambda c: 0, 2, backend='torch')\nexcept ms.BackendUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "mlscale[torch]" in out.stdout, out.stdout + out.stderr


def test_import_mlscale_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, mlscale; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
