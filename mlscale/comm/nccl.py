"""The ``nccl`` engine: :class:`NCCLComm` over ``cupy.cuda.nccl``, one rank per GPU.

    ms.launch(program, world_size=2, backend="nccl", device="gpu")   # 2 GPUs
    # or, in a script:  mpiexec -n 2 python script.py  with  ms.comm.NCCLComm()

MPI starts the processes and carries everything small: rank 0 makes the NCCL unique
id and MPI broadcasts it (the bootstrap), the cross-rank argument check of
collectives, and the header (shape, dtype) of every point-to-point message. The arrays
themselves, CuPy arrays on the rank's GPU, travel through NCCL: ``ncclSend``/
``ncclRecv`` for point to point, NCCL's own collectives for ``algorithm=None``.

Point to point. NCCL has no tags and no probe: between two ranks, messages arrive in
the order they were sent. mlscale keeps the tags (headers travel over MPI with them)
and checks the order: receiving a later message first raises ``CommError`` instead of
delivering the wrong bytes. ``isend``/``irecv`` are queued; the first ``wait()`` issues
every queued send and receive in one ``ncclGroupStart``/``ncclGroupEnd`` group, so a
``sendrecv`` round a ring cannot deadlock. Every call returns with the GPU work done
(the stream is synchronized), like the MPI engine's blocking calls.

NCCL's collectives need equal counts on every rank: ``reduce_scatter`` and
``all_gather`` with uneven pieces pad them to the largest piece. ``gather`` and
``scatter`` have no NCCL call and run mlscale's linear algorithm on send/recv.

This module imports cupy only when an :class:`NCCLComm` is made. UNTESTED ON HARDWARE
so far: the machine it was written on has no GPU; its tests (tests/test_nccl.py,
marked ``gpu``) run on a machine with one.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..collectives import ALGORITHMS, default_algorithm
from ..collectives._reduce_ops import finish
from .base import Communicator, Request
from .errors import BackendUnavailable, CommError
from .mpi import MPIComm, _make_header, _mismatch_message, _read_header

_NEEDS = (
    "backend='nccl' needs CuPy with NCCL and one CUDA GPU per rank ({why}). Install with "
    'pip install "mlscale[gpu]" (cupy-cuda12x) and "mlscale[mpi]"; with a single GPU use '
    "backend='sim', device='gpu' (N logical GPUs on one device)"
)


def _cupy_nccl():
    """(cupy, cupy.cuda.nccl), or BackendUnavailable saying what is missing and the fix."""
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        raise BackendUnavailable(_NEEDS.format(why=f"{type(e).__name__}: {e}")) from None
    if not getattr(nccl, "available", True):
        raise BackendUnavailable(_NEEDS.format(why="this CuPy was built without NCCL"))
    try:
        ndev = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise BackendUnavailable(_NEEDS.format(why=f"no usable CUDA driver: {e}")) from None
    if ndev < 1:
        raise BackendUnavailable(_NEEDS.format(why="no CUDA GPU is visible"))
    return cupy, nccl


def _nccl_types(nccl):
    t = {
        np.dtype(np.int8): nccl.NCCL_INT8, np.dtype(np.uint8): nccl.NCCL_UINT8,
        np.dtype(np.int32): nccl.NCCL_INT32, np.dtype(np.uint32): nccl.NCCL_UINT32,
        np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint64): nccl.NCCL_UINT64,
        np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
        np.dtype(np.float64): nccl.NCCL_FLOAT64,
    }
    ops = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX,
           "min": nccl.NCCL_MIN, "prod": nccl.NCCL_PROD}
    return t, ops


def _local_rank(mpi_comm):
    """This process's index among the ranks on its host (one GPU each)."""
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    from mpi4py import MPI

    node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    r = node.Get_rank()
    node.Free()
    return r


class _Op:
    __slots__ = ("kind", "peer", "buf", "keep", "hreq", "out", "tag", "done", "result", "error")

    def __init__(self, kind, peer, buf=None, keep=None, hreq=None, out=None, tag=0):
        self.kind, self.peer, self.buf, self.keep, self.hreq, self.out, self.tag = kind, peer, buf, keep, hreq, out, tag
        self.done, self.result, self.error = False, None, None


class _NcclRequest(Request):
    def __init__(self, comm, op):
        self._comm, self._op = comm, op

    def wait(self):
        if not self._op.done:
            self._comm._flush()
        if self._op.error is not None:
            err, self._op.error = self._op.error, None
            raise err
        return self._op.result

    def test(self):
        self.wait()  # NCCL p2p completes as a group: test() completes it
        return True


class NCCLComm(Communicator):
    """One rank per GPU; arrays are CuPy arrays on this rank's device (``comm.xp`` is
    cupy; NumPy inputs are copied to the GPU). ``comm``: the MPI communicator that
    bootstraps it (default COMM_WORLD); ``device``: the GPU index (default: the local
    rank on this host)."""

    backend = "nccl"
    prefers_out = True

    def __init__(self, comm=None, check=True, device=None):
        cupy, nccl = _cupy_nccl()
        self._cupy, self._ncclmod = cupy, nccl
        self._mpi = MPIComm(comm, check=check)
        super().__init__(self._mpi.rank, self._mpi.world_size, cupy)
        self.check = bool(check)
        ndev = cupy.cuda.runtime.getDeviceCount()
        if device is None:
            device = _local_rank(self._mpi.mpi_comm)
            if device >= ndev:
                raise BackendUnavailable(_NEEDS.format(
                    why=f"rank {self.rank} is local rank {device} on its host, which has only {ndev} GPU(s); "
                        "NCCL needs a GPU of its own for every rank"))
        self.device = int(device)
        cupy.cuda.Device(self.device).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self._mpi.mpi_comm.bcast(uid, root=0)  # the bootstrap: MPI carries the id
        self._nccl = nccl.NcclCommunicator(self.world_size, uid, self.rank)
        self._types, self._ops = _nccl_types(nccl)
        self._queue: list[_Op] = []
        self._sseq = [0] * self.world_size  # messages sent to each rank
        self._rseq = [0] * self.world_size  # messages received from each rank
        self._stash: dict = {}  # (src, tag) -> headers read too early, oldest first
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ helpers
    @property
    def _stream(self):
        return self._cupy.cuda.get_current_stream()

    def _sync(self):
        self._stream.synchronize()

    @property
    def clock(self):
        """Wall-clock seconds since this communicator was made."""
        return time.perf_counter() - self._t0

    def _as_array(self, x, what="x", numeric=True):
        a = self._cupy.asarray(x)
        if a.dtype == object or (numeric and a.dtype.kind not in "biufc"):  # as base._as_array
            raise CommError(f"{self._describe()}: {what} must be a numeric array (bool, int, float or "
                            f"complex), got dtype={a.dtype}")
        return self._cupy.ascontiguousarray(a)

    def _bytes(self, a):
        return a.reshape(-1).view(self._cupy.uint8)

    # ------------------------------------------------------------------ point to point
    def _isend(self, buf, dst, tag):
        seq = self._sseq[dst]
        self._sseq[dst] += 1
        from mpi4py import MPI

        h, _ = _make_header(buf, seq)  # shape, dtype and sequence number, over MPI
        hreq = self._mpi.mpi_comm.Isend([h, MPI.BYTE], dst, tag)
        op = _Op("send", dst, buf=buf, keep=h, hreq=hreq, tag=tag)
        self._queue.append(op)
        return _NcclRequest(self, op)

    def _irecv(self, src, tag, out):
        from mpi4py import MPI

        stashed = self._stash.get((src, tag))
        if stashed:  # a header read earlier by a receive that came too soon
            hbuf, hreq = stashed.pop(0), None
        else:
            hbuf = np.empty(8 * 70, np.uint8)
            hreq = self._mpi.mpi_comm.Irecv([hbuf, MPI.BYTE], src, tag)
        op = _Op("recv", src, keep=hbuf, hreq=hreq, out=out, tag=tag)
        self._queue.append(op)
        return _NcclRequest(self, op)

    def _send(self, buf, dst, tag):
        self._isend(buf, dst, tag).wait()

    def _recv(self, src, tag, out):
        return self._irecv(src, tag, out).wait()

    def recv_any(self, tag=0, out=None):
        """Receive the next message on ``tag`` from whichever rank sends first: ``(src, array)``."""
        from mpi4py import MPI

        tag = self._check_tag(tag)
        for (src, t), stashed in self._stash.items():
            if t == tag and stashed:
                return src, self._recv(src, tag, out)
        hbuf = np.empty(8 * 70, np.uint8)
        st = MPI.Status()
        self._mpi.mpi_comm.Recv([hbuf, MPI.BYTE], MPI.ANY_SOURCE, tag, st)
        src = st.Get_source()
        op = _Op("recv", src, keep=hbuf, hreq=None, out=out, tag=tag)
        self._queue.append(op)
        return src, _NcclRequest(self, op).wait()

    def _open_header(self, op):
        """Read a receive's header; allocate (or check) its buffer; check the order."""
        nbytes, seq, shape, dtype, _ = _read_header(op.keep)
        cp = self._cupy
        if seq != self._rseq[op.peer]:
            # keep the header for the next recv on this tag; nothing goes to NCCL
            self._stash.setdefault((op.peer, op.tag), []).append(op.keep)
            op.buf = None
            op.error = CommError(
                f"{self._describe()}: recv(src={op.peer}, tag={op.tag}) matched rank {op.peer}'s message "
                f"#{seq}, but its message #{self._rseq[op.peer]} (another tag) is still unreceived: NCCL "
                "delivers the messages between two ranks in the order they were sent; receive them in "
                "that order (this receive can be repeated afterwards)")
            return
        self._rseq[op.peer] = seq + 1
        out = op.out
        if out is not None and (tuple(out.shape) != shape or np.dtype(out.dtype) != dtype):
            op.error = CommError(
                f"{self._describe()}: recv from rank {op.peer} (tag {op.tag}): rank {op.peer} sent shape "
                f"{shape} dtype {dtype}, but out= has shape {tuple(out.shape)} dtype {out.dtype}")
            out = None  # the payload is still received (drained), so the sender completes
        if out is None or not out.flags.c_contiguous or not isinstance(out, cp.ndarray):
            op.buf = cp.empty(shape, dtype)
        else:
            op.buf = out

    def _flush(self):
        """Issue every queued send and receive as one NCCL group, then wait for it."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        from mpi4py import MPI

        for op in queue:
            if op.kind == "recv" and op.hreq is not None:
                op.hreq.Wait()
            if op.kind == "recv":
                self._open_header(op)
        nccl, stream = self._ncclmod, self._stream.ptr
        nccl.groupStart()
        try:
            for op in queue:
                if op.buf is None or op.buf.nbytes == 0:  # None: received out of order
                    continue
                n = op.buf.nbytes
                if op.kind == "send":
                    self._nccl.send(op.buf.data.ptr, n, nccl.NCCL_UINT8, op.peer, stream)
                else:
                    self._nccl.recv(op.buf.data.ptr, n, nccl.NCCL_UINT8, op.peer, stream)
        finally:
            nccl.groupEnd()
        self._sync()
        MPI.Request.Waitall([op.hreq for op in queue if op.kind == "send"])
        for op in queue:
            op.done = True
            if op.kind == "recv" and op.error is None:
                if op.out is not None and op.buf is not op.out:
                    op.out[...] = op.buf if isinstance(op.out, self._cupy.ndarray) else op.buf.get()
                    op.result = op.out
                else:
                    op.result = op.buf
            op.keep = None

    # ------------------------------------------------------------------ collectives
    def _agree(self, signature, extra=None):
        everyone = self._mpi.mpi_comm.allgather((signature, extra))
        sigs = [s for s, _ in everyone]
        if any(s != sigs[0] for s in sigs[1:]):
            raise CommError(_mismatch_message(self, sigs))
        return [e for _, e in everyone]

    def _native(self, name):
        return {
            "all_reduce": _all_reduce, "reduce_scatter": _reduce_scatter, "all_gather": _all_gather,
            "broadcast": _broadcast, "reduce": _reduce, "all_to_all": _all_to_all,
        }.get(name)

    def barrier(self):
        self._flush()
        self._sync()
        self._mpi.barrier()

    def split(self, color, key=None):
        """Sub-communicators: MPI_Comm_split, then a new NCCL communicator per group."""
        sub = self._mpi.split(color, key)
        return None if sub is None else NCCLComm(sub.mpi_comm, check=self.check, device=self.device)

    def free(self):
        """Destroy the NCCL communicator and free the MPI ones."""
        self._nccl.destroy()
        self._mpi.free()


# ---------------------------------------------------------------------- NCCL's own collectives
def _fallback(name, comm, x, *args):
    return ALGORITHMS[name][default_algorithm(name, comm, x)](comm, x, *args)


def _reducible(comm, x, op):
    return np.dtype(x.dtype) in comm._types and op in comm._ops


def _all_reduce(comm, x, op, out=None):
    if not _reducible(comm, x, op):
        return _fallback("all_reduce", comm, x, op)
    cp = comm._cupy
    fits = out is not None and isinstance(out, cp.ndarray) and out.flags.c_contiguous and \
        out.shape == x.shape and out.dtype == x.dtype and (op != "mean" or x.dtype.kind == "f")
    y = out if fits else cp.empty_like(x)
    comm._nccl.allReduce(x.data.ptr, y.data.ptr, x.size, comm._types[np.dtype(x.dtype)], comm._ops[op],
                         comm._stream.ptr)
    comm._sync()
    return finish(y, op, comm.world_size)


_all_reduce.accepts_out = True


def _reduce_scatter(comm, x, op):
    if not _reducible(comm, x, op):
        return _fallback("reduce_scatter", comm, x, op)
    cp, p, r = comm._cupy, comm.world_size, comm.rank
    flat = x.reshape(-1)
    n = flat.size
    q, extra = divmod(n, p)
    counts = [q + 1 if i < extra else q for i in range(p)]
    width = max(counts) if n else 0
    if extra:  # NCCL needs equal pieces: pad each to the widest
        send = cp.zeros(p * width, x.dtype)
        off = 0
        for i, c in enumerate(counts):
            send[i * width : i * width + c] = flat[off : off + c]
            off += c
    else:
        send = flat
    y = cp.empty(width, x.dtype)
    if width:
        comm._nccl.reduceScatter(send.data.ptr, y.data.ptr, width, comm._types[np.dtype(x.dtype)],
                                 comm._ops[op], comm._stream.ptr)
    comm._sync()
    return finish(y[: counts[r]].copy() if extra else y, op, p)


def _all_gather(comm, x, counts):
    cp, p = comm._cupy, comm.world_size
    row = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    nb = [int(c) * row * x.dtype.itemsize for c in counts]
    width = max(nb) if nb else 0
    send = comm._bytes(x)
    if send.size < width:  # pad to the widest piece
        padded = cp.zeros(width, cp.uint8)
        padded[: send.size] = send
        send = padded
    recv = cp.empty(p * width, cp.uint8)
    if width:
        comm._nccl.allGather(send.data.ptr, recv.data.ptr, width, comm._ncclmod.NCCL_UINT8, comm._stream.ptr)
    comm._sync()
    if all(b == width for b in nb):
        flat = recv
    else:
        flat = cp.concatenate([recv[i * width : i * width + nb[i]] for i in range(p)])
    return flat.view(x.dtype).reshape((int(sum(counts)),) + tuple(x.shape[1:]))


def _broadcast(comm, x, root):
    y = x.copy() if comm.rank == root else comm._cupy.empty_like(x)
    if y.nbytes:
        comm._nccl.broadcast(y.data.ptr, y.data.ptr, y.nbytes, comm._ncclmod.NCCL_UINT8, root, comm._stream.ptr)
    comm._sync()
    return y


def _reduce(comm, x, root, op):
    if not _reducible(comm, x, op):
        return _fallback("reduce", comm, x, root, op)
    y = comm._cupy.empty_like(x)
    comm._nccl.reduce(x.data.ptr, y.data.ptr, x.size, comm._types[np.dtype(x.dtype)], comm._ops[op], root,
                      comm._stream.ptr)
    comm._sync()
    return finish(y, op, comm.world_size) if comm.rank == root else None


def _all_to_all(comm, pieces, counts):
    """NCCL has no all-to-all call: one group of p-1 sends and p-1 receives (what
    nccl-tests' alltoall does), on the bytes, counts agreed before."""
    cp, nccl, p, r = comm._cupy, comm._ncclmod, comm.world_size, comm.rank
    comm._flush()  # point-to-point messages queued before keep their order
    rows, dt = tuple(pieces[0].shape[1:]), pieces[0].dtype
    got = [cp.empty((counts[j][r],) + rows, dt) for j in range(p)]
    got[r][...] = pieces[r]
    nccl.groupStart()
    try:
        for k in range(1, p):
            dst, src = (r + k) % p, (r - k) % p
            if pieces[dst].nbytes:
                comm._nccl.send(pieces[dst].data.ptr, pieces[dst].nbytes, nccl.NCCL_UINT8, dst, comm._stream.ptr)
            if got[src].nbytes:
                comm._nccl.recv(got[src].data.ptr, got[src].nbytes, nccl.NCCL_UINT8, src, comm._stream.ptr)
    finally:
        nccl.groupEnd()
    comm._sync()
    return got


def launch_nccl(fn, world_size, args=(), timeout=None, **kwargs):
    """Run ``fn(comm, *args)`` on ``world_size`` processes, one per GPU, each with an
    :class:`NCCLComm`; returns the results by rank (CuPy arrays come back as CuPy
    arrays on this process's current GPU). Same machinery as ``backend="mpi"``."""
    from ._mpi_launch import launch_processes

    cupy, _ = _cupy_nccl()  # fail here, clearly, rather than in every rank
    ndev = cupy.cuda.runtime.getDeviceCount()
    if world_size > ndev:
        raise BackendUnavailable(_NEEDS.format(
            why=f"world_size={world_size} but this machine has {ndev} GPU(s); NCCL needs one per rank"))
    return launch_processes(fn, world_size, args, engine="nccl", timeout=timeout, **kwargs)
