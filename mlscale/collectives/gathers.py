"""Reduce-scatter and all-gather: the two halves of a bandwidth-optimal all-reduce.

reduce_scatter: rank r gets chunk r (``np.array_split`` cuts) of the reduction of the
flattened inputs (MPI_Reduce_scatter, JAX psum_scatter, ZeRO's gradient sharding).
all_gather: every rank gets every rank's x, concatenated along axis 0 in rank order
(MPI_Allgatherv; lengths may differ between ranks). Ring versions cost
(p-1) alpha + ((p-1)/p) n beta; recursive halving/doubling lg p alpha + the same bytes.
"""
import math

from ._p2p import bounds, fold, fold_in, fold_out, recv, send
from ._reduce_ops import buffer_xp, finish
from .allreduce import _ring_all_gather, _ring_reduce_scatter, double, halve
from .rooted import broadcast_tree, gather_linear, reduce_linear, scatter_linear


# ---------------------------------------------------------------- reduce-scatter
def reduce_scatter_naive(comm, x, op):
    """Reduce everything at rank 0, then send each rank its chunk."""
    p, r = comm.world_size, comm.rank
    total = reduce_linear(comm, x, 0, op)
    chunks = None
    if r == 0:
        flat = total.reshape(-1)
        cut = bounds(flat.size, p)
        chunks = [flat[cut[i]:cut[i + 1]] for i in range(p)]
    return scatter_linear(comm, chunks, 0)


def reduce_scatter_ring(comm, x, op):
    """The first half of the ring all-reduce, shifted so rank r ends with chunk r."""
    p, r = comm.world_size, comm.rank
    flat = x.reshape(-1)
    cut = bounds(flat.size, p)
    owned, chunk = _ring_reduce_scatter(comm, flat, cut, op, -1)
    assert owned == r
    if p == 1 or comm.prefers_out:  # a view of x, or a scratch buffer: copy it out
        chunk = chunk.copy()
    return finish(chunk, op, p)


def _super_cut(cut, p):
    """Chunk boundaries for the pof2 ranks left after folding: newrank v stands for
    real ranks 2v and 2v+1 if v < rem, else for rank v + rem."""
    pof2, rem, _, _ = fold(p)
    first = [2 * v if v < rem else v + rem for v in range(pof2)]
    return [cut[f] for f in first] + [cut[p]]


def reduce_scatter_halving(comm, x, op):
    """Recursive halving (Thakur et al. 2005): in round k swap half of what you still
    hold with rank r XOR p/2^(k+1) and reduce the half you keep: lg p alpha + ((p-1)/p) n beta."""
    p, r = comm.world_size, comm.rank
    acc = x.reshape(-1).copy()
    cut = bounds(acc.size, p)
    pof2, v, real_of = fold_in(comm, acc, op)
    if v >= 0:
        halve(comm, acc, _super_cut(cut, p), v, pof2, real_of, op)
    if r < 2 * fold(p)[1]:  # the odd rank hands its even partner the partner's chunk
        if r % 2 == 0:
            return finish(recv(comm, r + 1), op, p)
        send(comm, acc[cut[r - 1]:cut[r]], r - 1)
    return finish(acc[cut[r]:cut[r + 1]].copy(), op, p)


# ---------------------------------------------------------------- all-gather
def _layout(comm, x, counts):
    rows = tuple(x.shape[1:]) if x.ndim else ()
    row = math.prod(rows)
    cut = [0]
    for c in counts:
        cut.append(cut[-1] + c * row)
    out = buffer_xp(comm, x).empty(cut[-1], dtype=x.dtype)
    r = comm.rank
    out[cut[r]:cut[r + 1]] = x.reshape(-1)
    return out, cut, (sum(counts),) + rows


def all_gather_naive(comm, x, counts):
    """Gather everything at rank 0, then broadcast it (binomial tree)."""
    out, cut, shape = _layout(comm, x, counts)
    parts = gather_linear(comm, x.reshape(-1), 0)
    if comm.rank == 0:
        for i, part in enumerate(parts):
            out[cut[i]:cut[i + 1]] = part
    return broadcast_tree(comm, out, 0).reshape(shape)


def all_gather_ring(comm, x, counts):
    """p-1 steps round the ring, each passing on the block received last."""
    out, cut, shape = _layout(comm, x, counts)
    _ring_all_gather(comm, out, cut, comm.rank)
    return out.reshape(shape)


def all_gather_doubling(comm, x, counts):
    """Recursive doubling: in round k swap everything you have with rank r XOR 2^k,
    doubling it: lg p alpha + ((p-1)/p) n beta. Non-powers of two fold in first."""
    p, r = comm.world_size, comm.rank
    out, cut, shape = _layout(comm, x, counts)
    pof2, rem, newrank_of, real_of = fold(p)
    v = newrank_of(r)
    if r < 2 * rem:  # the even rank's block goes to its odd partner first
        if r % 2 == 0:
            send(comm, out[cut[r]:cut[r + 1]], r + 1)
        else:
            recv(comm, r - 1, out=out[cut[r - 1]:cut[r]])
    if v >= 0:
        double(comm, out, _super_cut(cut, p), v, v, v + 1, pof2, real_of)
    return fold_out(comm, out).reshape(shape)
