"""All-reduce, five ways, each on send/recv alone (Thakur, Rabenseifner and Gropp 2005).

Every rank passes ``x`` of the same shape; every rank gets ``op`` over all of them.
The cost of each (alpha latency, beta s/byte, gamma s/byte reduced, n bytes,
p ranks) is in :mod:`mlscale.collectives.cost`; on the ``sim`` engine the virtual
time equals it.
"""
from ._p2p import bounds, fold, recv, reduce_, send, sendrecv
from ._reduce_ops import finish
from .rooted import broadcast_tree, reduce_tree


def naive(comm, x, op):
    """Gather every input at rank 0, reduce there, send the result back to each rank.
    Rank 0's link carries 2(p-1) n bytes: 2(p-1)(alpha + n beta) + (p-1) n gamma."""
    p, r = comm.world_size, comm.rank
    flat = x.reshape(-1)
    if r == 0:
        inputs = [recv(comm, src) for src in range(1, p)]  # (p-1) messages queue on one link
        acc = flat.copy()
        for b in inputs:
            reduce_(comm, acc, b, op)
        acc = finish(acc, op, p)
        for dst in range(1, p):
            send(comm, acc, dst)
    else:
        send(comm, flat, 0)
        acc = recv(comm, 0)
    return acc.reshape(x.shape)


def tree(comm, x, op):
    """Binomial-tree reduce to rank 0, then binomial-tree broadcast:
    2 ceil(lg p)(alpha + n beta) + ceil(lg p) n gamma. Few messages, full n each step."""
    acc = reduce_tree(comm, x, 0, op)  # the result on rank 0, None elsewhere
    return broadcast_tree(comm, acc if comm.rank == 0 else x, 0)


def _ring_reduce_scatter(comm, acc, cut, op, shift):
    """p-1 steps round the ring; at step s rank r sends chunk (r - s + shift) to its
    right neighbour and reduces chunk (r - s - 1 + shift) from its left one. Afterwards
    rank r holds the full reduction of chunk (r + 1 + shift) mod p."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        si, ri = (r - s + shift) % p, (r - s - 1 + shift) % p
        got = sendrecv(comm, acc[cut[si]:cut[si + 1]], right, left)
        reduce_(comm, acc[cut[ri]:cut[ri + 1]], got, op)
    return (r + 1 + shift) % p


def _ring_all_gather(comm, acc, cut, owned):
    """p-1 steps round the ring passing on the chunk received last; rank r starts
    with chunk ``owned`` complete and ends with every chunk."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        si, ri = (owned - s) % p, (owned - s - 1) % p
        sendrecv(comm, acc[cut[si]:cut[si + 1]], right, left, out=acc[cut[ri]:cut[ri + 1]])


def ring(comm, x, op):
    """Ring all-reduce = reduce-scatter + all-gather round a ring (Patarasuk and Yuan
    2009; Baidu, Gibiansky 2017). Each rank sends exactly 2(p-1)/p of the data, however
    large p is: 2(p-1) alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma (bandwidth-optimal)."""
    p = comm.world_size
    acc = x.reshape(-1).copy()
    cut = bounds(acc.size, p)
    owned = _ring_reduce_scatter(comm, acc, cut, op, 0)
    _ring_all_gather(comm, acc, cut, owned)
    return finish(acc, op, p).reshape(x.shape)


def recursive_doubling(comm, x, op):
    """In round k rank r swaps its whole vector with rank r XOR 2^k and reduces:
    lg p (alpha + n beta + n gamma). Latency-optimal; MPICH's choice for short messages.
    World sizes that are not powers of two fold the extra ranks in first (2 more steps)."""
    p, r = comm.world_size, comm.rank
    acc = x.reshape(-1).copy()
    pof2, rem, newrank_of, real_of = fold(p)
    v = newrank_of(r)
    if r < 2 * rem:
        if r % 2 == 0:
            send(comm, acc, r + 1)
        else:
            reduce_(comm, acc, recv(comm, r - 1), op)
    if v >= 0:
        mask = 1
        while mask < pof2:
            dst = real_of(v ^ mask)
            reduce_(comm, acc, sendrecv(comm, acc, dst, dst), op)
            mask <<= 1
    if r < 2 * rem:
        if r % 2 == 0:
            acc = recv(comm, r + 1)
        else:
            send(comm, acc, r - 1)
    return finish(acc, op, p).reshape(x.shape)


def rabenseifner(comm, x, op):
    """Reduce-scatter by recursive halving, then all-gather by recursive doubling
    (Rabenseifner 2004): 2 lg p alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma.
    MPICH's choice for long messages. Non-powers of two fold in as recursive doubling does."""
    p, r = comm.world_size, comm.rank
    acc = x.reshape(-1).copy()
    pof2, rem, newrank_of, real_of = fold(p)
    v = newrank_of(r)
    if r < 2 * rem:
        if r % 2 == 0:
            send(comm, acc, r + 1)
        else:
            reduce_(comm, acc, recv(comm, r - 1), op)
    if v >= 0:
        cut = bounds(acc.size, pof2)
        lo, hi = 0, pof2  # chunks this rank is responsible for
        mask = pof2 >> 1
        while mask >= 1:  # recursive halving: keep half, send the other half
            dst = real_of(v ^ mask)
            mid = (lo + hi) // 2
            keep, give = ((lo, mid), (mid, hi)) if not v & mask else ((mid, hi), (lo, mid))
            got = sendrecv(comm, acc[cut[give[0]]:cut[give[1]]], dst, dst)
            reduce_(comm, acc[cut[keep[0]]:cut[keep[1]]], got, op)
            lo, hi = keep
            mask >>= 1
        mask = 1
        while mask < pof2:  # recursive doubling: swap halves back
            dst = real_of(v ^ mask)
            width = hi - lo
            olo = lo + width if not v & mask else lo - width
            sendrecv(comm, acc[cut[lo]:cut[hi]], dst, dst, out=acc[cut[olo]:cut[olo + width]])
            lo, hi = min(lo, olo), max(hi, olo + width)
            mask <<= 1
    if r < 2 * rem:
        if r % 2 == 0:
            acc = recv(comm, r + 1)
        else:
            send(comm, acc, r - 1)
    return finish(acc, op, p).reshape(x.shape)
