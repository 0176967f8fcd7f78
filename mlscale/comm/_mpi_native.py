"""MPI's own collectives for ``algorithm=None`` / ``"native"`` on the ``mpi`` engine:
MPI_Allreduce, Reduce_scatter, Allgatherv, Bcast, Reduce, Gatherv, Scatterv, on raw
NumPy buffers (no pickling). Each takes the arguments mlscale's own algorithms take,
so the base class calls either the same way. Dtypes MPI cannot reduce (bool, float16)
run mlscale's default algorithm instead. "mean" is a sum divided once at the end.
"""
import numpy as np

from ..collectives import ALGORITHMS, default_algorithm
from ..collectives._reduce_ops import finish
from .mpi import _bytes, _mpi


def _mpi_op(op):
    MPI = _mpi()
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}[op]


def _mpi_reducible(dtype, op):
    """Can MPI reduce this dtype with this op directly? (Otherwise mlscale's algorithm runs.)"""
    if dtype.kind in "iu" and dtype.itemsize in (1, 2, 4, 8):
        return True
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return True
    return dtype.kind == "c" and dtype.itemsize in (8, 16) and op in ("sum", "mean", "prod")


def _fallback(name, comm, x, *args):
    algo = default_algorithm(name, comm, x)
    return ALGORITHMS[name][algo](comm, x, *args)


def _native_all_reduce(comm, x, op, out=None):
    if not _mpi_reducible(x.dtype, op):
        return _fallback("all_reduce", comm, x, op)
    MPI = _mpi()
    fits = (out is not None and out.flags.c_contiguous and out.shape == x.shape
            and out.dtype == x.dtype and (op != "mean" or x.dtype.kind in "fc"))
    if fits and out is x:
        comm._hc.Allreduce(MPI.IN_PLACE, out, op=_mpi_op(op))
        y = out
    else:
        y = out if fits and not np.shares_memory(out, x) else np.empty_like(x)
        comm._hc.Allreduce(x, y, op=_mpi_op(op))
    return finish(y, op, comm.world_size)


_native_all_reduce.accepts_out = True


def _split_counts(n, p):
    q, r = divmod(n, p)
    return [q + 1 if i < r else q for i in range(p)]


def _native_reduce_scatter(comm, x, op):
    if not _mpi_reducible(x.dtype, op):
        return _fallback("reduce_scatter", comm, x, op)
    counts = _split_counts(x.size, comm.world_size)
    y = np.empty(counts[comm.rank], x.dtype)
    comm._hc.Reduce_scatter(x.reshape(-1), y, counts, op=_mpi_op(op))
    return finish(y, op, comm.world_size)


def _native_all_gather(comm, x, counts):
    MPI = _mpi()
    row = x.dtype.itemsize * (int(np.prod(x.shape[1:])) if x.ndim > 1 else 1)
    nb = [int(c) * row for c in counts]
    displs = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(int).tolist()
    y = np.empty((int(sum(counts)),) + tuple(x.shape[1:]), x.dtype)
    comm._hc.Allgatherv([_bytes(x), MPI.BYTE], [_bytes(y), nb, displs, MPI.BYTE])
    return y


def _native_broadcast(comm, x, root):
    y = x.copy() if comm.rank == root else np.empty_like(x)
    comm._hc.Bcast([_bytes(y), _mpi().BYTE], root)
    return y


def _native_reduce(comm, x, root, op):
    if not _mpi_reducible(x.dtype, op):
        return _fallback("reduce", comm, x, root, op)
    y = np.empty_like(x) if comm.rank == root else None
    comm._hc.Reduce(x, y, op=_mpi_op(op), root=root)
    return finish(y, op, comm.world_size) if comm.rank == root else None


def _native_gather(comm, x, root):
    MPI = _mpi()
    metas = comm._hc.gather((x.shape, x.dtype.str), root)
    if comm.rank != root:
        comm._hc.Gatherv([_bytes(x), MPI.BYTE], None, root)
        return None
    outs = [np.empty(s, np.dtype(d)) for s, d in metas]
    nb = [a.nbytes for a in outs]
    displs = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(int).tolist()
    flat = np.empty(int(sum(nb)), np.uint8)
    comm._hc.Gatherv([_bytes(x), MPI.BYTE], [flat, nb, displs, MPI.BYTE], root)
    for a, d, n in zip(outs, displs, nb):
        _bytes(a)[:] = flat[d : d + n]
    return outs


def _native_scatter(comm, xs, root):
    MPI = _mpi()
    metas = [(a.shape, a.dtype.str) for a in xs] if comm.rank == root else None
    shape, dt = comm._hc.scatter(metas, root)
    y = np.empty(shape, np.dtype(dt))
    if comm.rank == root:
        nb = [a.nbytes for a in xs]
        displs = np.concatenate([[0], np.cumsum(nb)[:-1]]).astype(int).tolist()
        flat = np.concatenate([_bytes(a) for a in xs]) if xs else np.empty(0, np.uint8)
        comm._hc.Scatterv([flat, nb, displs, MPI.BYTE], [_bytes(y), MPI.BYTE], root)
    else:
        comm._hc.Scatterv(None, [_bytes(y), MPI.BYTE], root)
    return y


NATIVE = {
    "all_reduce": _native_all_reduce,
    "reduce_scatter": _native_reduce_scatter,
    "all_gather": _native_all_gather,
    "broadcast": _native_broadcast,
    "reduce": _native_reduce,
    "gather": _native_gather,
    "scatter": _native_scatter,
}
