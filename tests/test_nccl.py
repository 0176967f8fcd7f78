"""The ``nccl`` engine (NCCLComm over cupy.cuda.nccl).

Three layers, so that what can run here does:

1. without cupy or a GPU: ``import mlscale.comm.nccl`` works and every entry point
   raises ``BackendUnavailable`` with the fix (these run everywhere);
2. ``FAKE_CUPY``: a stand-in ``cupy`` package (NumPy arrays; its ``nccl`` module does
   the NCCL calls with MPI on the raw pointers, groups included) runs NCCLComm's own
   logic in real MPI processes: headers, grouping, ordering, padding, the native
   collectives' argument handling (marked ``mpi``; runs on a CPU machine);
3. the same body on real GPUs (marked ``gpu``: skipped here with the reason, runs
   where cupy sees a GPU; one rank per GPU, so a 1-GPU machine runs world size 1).
"""
import sys
import textwrap

import numpy as np
import pytest

import mlscale as ms

try:
    import cupy  # noqa: F401

    HAVE_CUPY = True
except Exception:
    HAVE_CUPY = False


# ---------------------------------------------------------------- 1. clear errors without a GPU
@pytest.mark.skipif(HAVE_CUPY, reason="cupy is installed here: the missing-cupy message cannot be shown")
def test_without_cupy_the_error_says_what_to_install():
    from mlscale.comm.nccl import NCCLComm

    with pytest.raises(ms.BackendUnavailable, match=r'pip install "mlscale\[gpu\]"') as info:
        NCCLComm()
    assert "device='gpu'" in str(info.value)  # the fallback for one GPU / none
    with pytest.raises(ms.BackendUnavailable, match="cupy"):
        ms.launch(lambda comm: 0, 2, backend="nccl", device="gpu")


def test_import_is_safe_without_cupy():
    import subprocess

    code = "import sys, mlscale.comm.nccl; assert 'cupy' not in sys.modules and 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- the body, on every rank
def nccl_body(comm):
    """p2p and every collective on NCCLComm against the NumPy reference; returns the
    number of checks (asserting on the way)."""
    import cupy as cp

    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    assert comm.backend == "nccl" and comm.xp is cp
    checks = 0
    for n in (0, 1, 7, 1000, 100_003):
        for dt in (np.float32, np.float64, np.int32, np.int8):
            x = cp.arange(n, dtype=dt) + dt(r)
            y = comm.sendrecv(x, right, left, tag=3)
            assert isinstance(y, cp.ndarray) and y.dtype == dt and y.shape == (n,)
            assert np.array_equal(y.get(), np.arange(n, dtype=dt) + dt(left))
            out = cp.empty(n, dt)
            assert comm.sendrecv(x, right, left, out=out) is out
            assert np.array_equal(out.get(), np.arange(n, dtype=dt) + dt(left))
            checks += 2
    y = comm.sendrecv(np.full((3, 4), r), right, left)  # NumPy in, CuPy out
    assert isinstance(y, cp.ndarray) and y.shape == (3, 4) and int(y[0, 0]) == left
    try:  # out= that does not fit
        comm.sendrecv(cp.zeros(5), right, left, out=cp.empty(6))
        raise AssertionError("out= mismatch not detected")
    except ms.CommError as e:
        assert "(5,)" in str(e) and "(6,)" in str(e)
    if p > 1:  # receiving out of order raises, and the receive can be repeated in order
        if r == 0:
            a = comm.isend(cp.full(3, 5.0), 1, tag=5)
            b = comm.isend(cp.full(4, 6.0), 1, tag=6)
            a.wait()
            b.wait()
        elif r == 1:
            try:
                comm.recv(0, tag=6)
                raise AssertionError("out-of-order NCCL receive not detected")
            except ms.CommError as e:
                assert "order" in str(e)
            assert comm.recv(0, tag=5).get().tolist() == [5.0] * 3
            assert comm.recv(0, tag=6).get().tolist() == [6.0] * 4
        comm.barrier()
    # every collective: NCCL's own and mlscale's on NCCL p2p, awkward lengths
    from mlscale.collectives import ALGORITHMS

    algos = {k: ["native", None] + sorted(v) for k, v in ALGORITHMS.items()}
    for n in (1, 3, 7, 1000):
        for dt in (np.float32, np.float64, np.int32):
            for op in ("sum", "mean", "max", "min", "prod"):
                xs = [((np.arange(n) * (q + 3)) % 4 + 1).astype(dt) for q in range(p)]
                f = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}[op]
                want = f(np.stack(xs), axis=0)
                want = want if op == "mean" else want.astype(dt)
                x = cp.asarray(xs[r])
                for a in algos["all_reduce"]:
                    np.testing.assert_allclose(comm.all_reduce(x, op=op, algorithm=a).get(), want, rtol=1e-6)
                cut = np.array_split(np.arange(n), p)[r]
                for a in algos["reduce_scatter"]:
                    np.testing.assert_allclose(comm.reduce_scatter(x, op=op, algorithm=a).get(), want[cut], rtol=1e-6)
                for a in algos["reduce"]:
                    got = comm.reduce(x, root=p - 1, op=op, algorithm=a)
                    if r == p - 1:
                        np.testing.assert_allclose(got.get(), want, rtol=1e-6)
                    else:
                        assert got is None
                checks += len(algos["all_reduce"]) + len(algos["reduce_scatter"]) + len(algos["reduce"])
            mine = cp.asarray(np.full((n + r % 2, 2), r, dt))  # ragged rows: padded for NCCL
            full = np.concatenate([np.full((n + q % 2, 2), q, dt) for q in range(p)])
            for a in algos["all_gather"]:
                assert np.array_equal(comm.all_gather(mine, algorithm=a).get(), full)
            for a in algos["broadcast"]:
                got = comm.broadcast(cp.full(n, r, dt), root=p - 1, algorithm=a)
                assert np.array_equal(got.get(), np.full(n, p - 1, dt))
            checks += len(algos["all_gather"]) + len(algos["broadcast"])
    parts = comm.gather(cp.arange(r + 1), root=0)
    if r == 0:
        assert [q.get().tolist() for q in parts] == [list(range(q + 1)) for q in range(p)]
    got = comm.scatter([cp.full(q + 1, q) for q in range(p)] if r == 0 else None, root=0)
    assert got.get().tolist() == [r] * (r + 1)
    if p > 1:  # mismatched shapes: CommError on every rank
        try:
            comm.all_reduce(cp.ones(3 + (r == p - 1)))
            raise AssertionError("shape mismatch not detected")
        except ms.CommError as e:
            assert "(3,)" in str(e) and "(4,)" in str(e)
    sub = comm.split(r % 2)
    assert sub.backend == "nccl" and int(sub.all_reduce(cp.array([1]))[0]) == sub.world_size
    comm.barrier()
    return checks


# ---------------------------------------------------------------- 2. NCCLComm's logic on a stand-in cupy
FAKE_CUPY = {
    "cupy/__init__.py": '''
        """A stand-in for cupy in tests: NumPy arrays that carry a .data.ptr and .get()."""
        import numpy as _np
        from numpy import (add, maximum, minimum, multiply, float16, float32, float64, int8, int32,
                           int64, uint8, bool_, dtype)

        class _Mem:
            def __init__(self, ptr):
                self.ptr = ptr

        class ndarray(_np.ndarray):
            @property
            def data(self):
                return _Mem(self.__array_interface__["data"][0])

            def get(self):
                return _np.array(self)

        def _wrap(a):
            return _np.asarray(a).view(ndarray)

        def asarray(a, dtype=None):
            return _wrap(_np.asarray(a, dtype))

        def ascontiguousarray(a):
            return _wrap(_np.ascontiguousarray(a))

        def array(a, dtype=None):
            return _wrap(_np.array(a, dtype))

        def empty(shape, dtype=float):
            return _wrap(_np.empty(shape, dtype))

        def zeros(shape, dtype=float):
            return _wrap(_np.zeros(shape, dtype))

        def full(shape, v, dtype=None):
            return _wrap(_np.full(shape, v, dtype))

        def ones(shape, dtype=float):
            return _wrap(_np.ones(shape, dtype))

        def arange(*a, dtype=None):
            return _wrap(_np.arange(*a, dtype=dtype))

        def empty_like(a, dtype=None):
            return _wrap(_np.empty_like(_np.asarray(a), dtype))

        def concatenate(xs):
            return _wrap(_np.concatenate([_np.asarray(x) for x in xs]))

        from . import cuda  # noqa: E402
    ''',
    "cupy/cuda/__init__.py": '''
        from . import nccl, runtime  # noqa: F401

        class Device:
            def __init__(self, i=0):
                self.id = i

            def use(self):
                pass

        class _Stream:
            ptr = 0

            def synchronize(self):
                pass

        def get_current_stream():
            return _Stream()
    ''',
    "cupy/cuda/runtime.py": '''
        def getDeviceCount():
            return 8
    ''',
    "cupy/cuda/nccl.py": '''
        """NCCL's calls done with MPI on raw pointers, in order per peer, grouped like NCCL."""
        import ctypes
        import os
        import zlib

        import numpy as np
        from mpi4py import MPI

        available = True
        (NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64, NCCL_FLOAT16,
         NCCL_FLOAT32, NCCL_FLOAT64) = range(9)
        NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = range(4)
        _NP = [np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float16, np.float32, np.float64]
        _OP = {NCCL_SUM: MPI.SUM, NCCL_PROD: MPI.PROD, NCCL_MAX: MPI.MAX, NCCL_MIN: MPI.MIN}
        _group = None

        def _arr(ptr, count, dt):
            t = np.dtype(_NP[dt])
            return np.frombuffer((ctypes.c_char * (count * t.itemsize)).from_address(ptr), t, count)

        def get_unique_id():
            return tuple(int(b) - 128 for b in os.urandom(128))

        def groupStart():
            global _group
            _group = []

        def groupEnd():
            global _group
            ops, _group = _group, None
            MPI.Request.Waitall([f() for f in ops])

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                # every rank of the world makes its group's communicator at once (as split does):
                # the unique id names the group
                color = zlib.crc32(bytes(b % 256 for b in uid)) % (1 << 30)
                self._c = MPI.COMM_WORLD.Split(color, rank)
                assert self._c.Get_size() == ndev and self._c.Get_rank() == rank and len(uid) == 128

            def _p2p(self, start):
                if _group is None:
                    start().Wait()
                else:
                    _group.append(start)

            def send(self, ptr, count, dt, peer, stream):
                buf = _arr(ptr, count, dt)
                self._p2p(lambda: self._c.Isend(buf, peer, 0))

            def recv(self, ptr, count, dt, peer, stream):
                buf = _arr(ptr, count, dt)
                self._p2p(lambda: self._c.Irecv(buf, peer, 0))

            def allReduce(self, s, r, count, dt, op, stream):
                src = MPI.IN_PLACE if s == r else _arr(s, count, dt)
                self._c.Allreduce(src, _arr(r, count, dt), op=_OP[op])

            def reduceScatter(self, s, r, count, dt, op, stream):
                p = self._c.Get_size()
                self._c.Reduce_scatter_block(_arr(s, count * p, dt), _arr(r, count, dt), op=_OP[op])

            def allGather(self, s, r, count, dt, stream):
                self._c.Allgather(_arr(s, count, dt), _arr(r, count * self._c.Get_size(), dt))

            def broadcast(self, s, r, count, dt, root, stream):
                if s != r and self._c.Get_rank() == root:
                    _arr(r, count, dt)[:] = _arr(s, count, dt)
                self._c.Bcast(_arr(r, count, dt), root)

            def reduce(self, s, r, count, dt, op, root, stream):
                self._c.Reduce(_arr(s, count, dt), _arr(r, count, dt), op=_OP[op], root=root)

            def destroy(self):
                self._c.Free()
    ''',
}


def _fake_cupy(tmp_path):
    for rel, text in FAKE_CUPY.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(tmp_path)


@pytest.mark.mpi
@pytest.mark.parametrize("p", [1, 3])
def test_ncclcomm_logic_on_a_stand_in_cupy(tmp_path, monkeypatch, p):
    pytest.importorskip("mpi4py")
    from mlscale.comm._mpi_launch import launch_processes

    monkeypatch.syspath_prepend(_fake_cupy(tmp_path))  # the ranks get this sys.path
    try:
        res = launch_processes(nccl_body, p, engine="nccl", timeout=120)
    finally:
        for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
            del sys.modules[name]  # never leave the stand-in behind for other tests
    assert len(set(res)) == 1 and res[0] > 300


# ---------------------------------------------------------------- 3. real GPUs
def _gpus():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.mpi
def test_nccl_on_every_gpu_here():
    p = min(_gpus(), 4)
    res = ms.launch(nccl_body, p, backend="nccl", device="gpu", timeout=300)
    assert res.backend == "nccl" and len(set(res)) == 1 and res[0] > 300


@pytest.mark.gpu
@pytest.mark.mpi
def test_nccl_ring_all_reduce_of_64_mib_matches_native():
    p = min(_gpus(), 4)

    def prog(comm):
        import cupy as cp

        x = cp.full(16 << 20, comm.rank + 1, cp.float32)
        a = comm.all_reduce(x)
        b = comm.all_reduce(x, algorithm="ring")
        return float(a[0]), float(b[-1]), bool(cp.all(a == b))

    for a, b, same in ms.launch(prog, p, backend="nccl", device="gpu", timeout=300):
        assert a == b == p * (p + 1) / 2 and same


@pytest.mark.gpu
def test_more_ranks_than_gpus_is_refused_clearly():
    with pytest.raises(ms.BackendUnavailable, match="one per rank"):
        ms.launch(lambda comm: 0, _gpus() + 1, backend="nccl", device="gpu")
