"""The payload group's own collectives (NCCL's on GPUs, gloo's in the CPU stand-in) for
``TorchComm(device="gpu")`` and ``TorchComm(two_groups=True)``: all_reduce, broadcast,
reduce, all_gather (``all_gather_into_tensor``, pieces padded to the widest),
reduce_scatter (``reduce_scatter_tensor``, padded likewise), all_to_all
(``all_to_all_single`` on the bytes, the agreed counts as split sizes). Each first
completes the queued point to point (``comm._post``); dtypes the payload group cannot
reduce run mlscale's default algorithm over send/recv."""
from __future__ import annotations

import numpy as np

from ..collectives import ALGORITHMS, default_algorithm
from ..collectives._reduce_ops import finish
from ._torch_wire import _bytes
from .torch_dist import _op


def _fallback(name, comm, x, *args):
    return ALGORITHMS[name][default_algorithm(name, comm, x)](comm, x, *args)


def _own(comm):
    return f"({comm._wire.name}'s own)"


def _all_reduce(comm, x, op):
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("all_reduce", comm, x, op)
    dist = comm._dist
    y = x.copy()
    opts = dist.AllreduceOptions()
    opts.reduceOp = _op(dist, op)
    if y.size:
        t = comm._wire.tensor(y.reshape(-1))
        comm._post(f"all_reduce {_own(comm)}", lambda: comm._data.allreduce([t], opts))
    else:
        comm._flush()
    return finish(y, op, comm.world_size)


def _broadcast(comm, x, root):
    y = x.copy() if comm.rank == root else comm._wire.empty(x.shape, x.dtype)
    dist = comm._dist
    opts = dist.BroadcastOptions()
    opts.rootRank = root
    if y.nbytes:
        t = comm._wire.tensor(_bytes(y))
        comm._post(f"broadcast {_own(comm)}", lambda: comm._data.broadcast([t], opts))
    else:
        comm._flush()
    return y


def _reduce(comm, x, root, op):
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("reduce", comm, x, root, op)
    dist = comm._dist
    y = x.copy()
    opts = dist.ReduceOptions()
    opts.rootRank, opts.reduceOp = root, _op(dist, op)
    if y.size:
        t = comm._wire.tensor(y.reshape(-1))
        comm._post(f"reduce {_own(comm)}", lambda: comm._data.reduce([t], opts))
    else:
        comm._flush()
    return finish(y, op, comm.world_size) if comm.rank == root else None


def _all_gather(comm, x, counts):
    """all_gather_into_tensor on the bytes, each piece padded to the widest."""
    xp, p, wire = comm.xp, comm.world_size, comm._wire
    row = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    nb = [int(c) * row * x.dtype.itemsize for c in counts]
    width = max(nb) if nb else 0
    send = _bytes(x)
    if send.size < width:
        padded = wire.zeros(width, np.uint8)
        padded[: send.size] = send
        send = padded
    recv = wire.empty(p * width, np.uint8)
    if width:
        ts, tr = wire.tensor(send), wire.tensor(recv)
        comm._post(f"all_gather {_own(comm)}", lambda: comm._data._allgather_base(tr, ts))
    else:
        comm._flush()
    flat = recv if all(b == width for b in nb) else xp.concatenate([recv[i * width: i * width + nb[i]]
                                                                     for i in range(p)])
    return flat.view(x.dtype).reshape((int(sum(counts)),) + tuple(x.shape[1:]))


def _reduce_scatter(comm, x, op):
    """reduce_scatter_tensor; chunks as np.array_split, uneven ones padded to the widest."""
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("reduce_scatter", comm, x, op)
    dist, wire, p, r = comm._dist, comm._wire, comm.world_size, comm.rank
    flat = x.reshape(-1)
    q, extra = divmod(flat.size, p)
    counts = [q + 1 if i < extra else q for i in range(p)]
    width = max(counts) if flat.size else 0
    if extra:  # equal pieces for NCCL: each padded to the widest (the padding is dropped after)
        send = wire.zeros(p * width, x.dtype)
        off = 0
        for i, c in enumerate(counts):
            send[i * width: i * width + c] = flat[off: off + c]
            off += c
    else:
        send = flat
    y = wire.empty(width, x.dtype)
    opts = dist.ReduceScatterOptions()
    opts.reduceOp = _op(dist, op)
    if width:
        ts, ty = wire.tensor(send), wire.tensor(y)
        comm._post(f"reduce_scatter {_own(comm)}", lambda: comm._data._reduce_scatter_base(ty, ts, opts))
    else:
        comm._flush()
    return finish(y[: counts[r]].copy() if extra else y, op, p)


def _all_to_all(comm, pieces, counts):
    """all_to_all_single on the bytes, with the agreed counts as split sizes."""
    xp, wire, p, r = comm.xp, comm._wire, comm.world_size, comm.rank
    rows, dt = tuple(pieces[0].shape[1:]), pieces[0].dtype
    rowbytes = int(np.prod(rows)) * dt.itemsize
    send_sizes = [int(counts[r][j]) * rowbytes for j in range(p)]
    recv_sizes = [int(counts[j][r]) * rowbytes for j in range(p)]
    send = (xp.concatenate([_bytes(xp.ascontiguousarray(a)) for a in pieces]) if sum(send_sizes)
            else wire.empty(0, np.uint8))
    recv = wire.empty(sum(recv_sizes), np.uint8)
    if any(int(c) for row_ in counts for c in row_) and rowbytes:
        dist = comm._dist
        ts, tr = wire.tensor(send), wire.tensor(recv)
        comm._post(f"all_to_all {_own(comm)}",
                   lambda: comm._data.alltoall_base(tr, ts, recv_sizes, send_sizes, dist.AllToAllOptions()))
    else:
        comm._flush()
    got, off = [], 0
    for j in range(p):
        got.append(recv[off: off + recv_sizes[j]].view(dt).reshape((int(counts[j][r]),) + rows))
        off += recv_sizes[j]
    return got


NATIVE = {
    "all_reduce": _all_reduce,
    "broadcast": _broadcast,
    "reduce": _reduce,
    "all_gather": _all_gather,
    "reduce_scatter": _reduce_scatter,
    "all_to_all": _all_to_all,
}
