"""all_to_all on real MPI processes, p = 2..4: MPI's own Alltoallv and mlscale's
pairwise, Bruck and linear, uneven pieces, equal to the block transpose; a mismatch
between ranks is a CommError on every rank, not a hang. One mpiexec launch per world
size runs every section (``_mpi_batch``). Run alone: ``pytest -m mpi tests/test_alltoall_mpi.py``."""
import numpy as np
import pytest

from mlscale.collectives import alltoall

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()
ALGOS = ["native", "pairwise", "bruck", "linear"]


def _pieces(rank, p):
    rng = np.random.default_rng([7, rank])
    return [rng.random((int(rng.integers(0, 4)), 2)) + 10 * rank + j for j in range(p)]


def _run(algorithm):
    def section(comm):
        got = comm.all_to_all(_pieces(comm.rank, comm.world_size), algorithm=algorithm)
        x = np.arange(4 * comm.world_size, dtype=np.int64) + 100 * comm.rank
        y, sizes = comm.all_to_all_v(x[: comm.rank + comm.world_size], [1] * (comm.world_size - 1) + [comm.rank + 1],
                                     algorithm=algorithm)
        return got, comm.all_to_all(x, algorithm=algorithm), y, sizes

    return section


def _mismatch(comm):
    try:
        comm.all_to_all_v(np.ones(comm.world_size), recv_split_sizes=[2] + [1] * (comm.world_size - 1))
    except Exception as e:
        return type(e).__name__, str(e)
    return None


SECTIONS = {a: _run(None if a == "native" else a) for a in ALGOS}
SECTIONS["mismatch"] = _mismatch
BATCHES = Batches(SECTIONS)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("p", [2, 3, 4])
def test_all_to_all_on_mpi_equals_the_transpose(algorithm, p):
    res = BATCHES.section(p, algorithm)
    want = alltoall.reference([_pieces(i, p) for i in range(p)])
    for j, (got, even, y, sizes) in enumerate(res):
        for i in range(p):
            np.testing.assert_array_equal(got[i], want[j][i], err_msg=f"rank {j}, piece from {i}")
        xs = [np.arange(4 * p, dtype=np.int64) + 100 * i for i in range(p)]
        np.testing.assert_array_equal(even, np.concatenate([x[4 * j:4 * j + 4] for x in xs]))
        assert sizes == ([1] * p if j < p - 1 else [i + 1 for i in range(p)])
        cut = [np.cumsum([0] + [1] * (p - 1) + [i + 1]) for i in range(p)]
        np.testing.assert_array_equal(y, np.concatenate([xs[i][cut[i][j]:cut[i][j + 1]] for i in range(p)]))


@pytest.mark.parametrize("p", [2, 4])
def test_mismatched_splits_on_mpi_raise_on_every_rank(p):
    for name, msg in BATCHES.section(p, "mismatch"):
        assert name == "CommError" and "expects 2 row(s) from rank 0, which sends it 1" in msg


# ---------------------------------------------------------------- NCCL: grouped send/recv
def nccl_all_to_all_body(comm):
    """Every all_to_all algorithm on NCCLComm (NCCL's grouped send/recv for None and
    "native") against the transpose; returns the number of checks."""
    import cupy as cp

    p, r = comm.world_size, comm.rank
    want = alltoall.reference([_pieces(i, p) for i in range(p)])
    checks = 0
    for a in ["native", None, "pairwise", "bruck", "linear"]:
        sreq = comm.isend(cp.arange(3), (r + 1) % p, tag=4)  # queued p2p messages keep their place
        rreq = comm.irecv((r - 1) % p, tag=4)
        got = comm.all_to_all([cp.asarray(x) for x in _pieces(r, p)], algorithm=a)
        assert rreq.wait().get().tolist() == [0, 1, 2]
        sreq.wait()
        for i in range(p):
            assert isinstance(got[i], cp.ndarray)
            np.testing.assert_array_equal(got[i].get(), want[r][i])
            checks += 1
    return checks


@pytest.mark.parametrize("p", [1, 3])
def test_nccl_all_to_all_logic_on_a_stand_in_cupy(tmp_path, monkeypatch, p):
    import sys

    from mlscale.comm._mpi_launch import launch_processes
    from test_nccl import _fake_cupy

    monkeypatch.syspath_prepend(_fake_cupy(tmp_path))
    try:
        res = launch_processes(nccl_all_to_all_body, p, engine="nccl", timeout=120)
    finally:
        for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
            del sys.modules[name]
    assert res == [5 * p] * p


@pytest.mark.gpu
def test_nccl_all_to_all_on_every_gpu_here():
    import cupy

    import mlscale as ms

    p = min(cupy.cuda.runtime.getDeviceCount(), 4)
    assert ms.launch(nccl_all_to_all_body, p, backend="nccl", device="gpu", timeout=300) == [5 * p] * p
