"""All-reduce, five ways, each on send/recv alone (Thakur, Rabenseifner and Gropp 2005).

Every rank passes ``x`` of the same shape; every rank gets ``op`` over all of them.
The cost of each (alpha latency, beta s/byte, gamma s/byte reduced, n bytes,
p ranks) is in :mod:`mlscale.collectives.cost`; on the ``sim`` engine the virtual
time equals it.
"""
from ._p2p import bounds, fold_in, fold_out, pass_along, recv, reduce_, release, send, sendrecv
from ._reduce_ops import buffer_xp, finish
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


def _ring_reduce_scatter(comm, flat, cut, op, shift):
    """p-1 steps round the ring. At step s rank r passes its partial sum of chunk
    (r - s + shift) to the right, receives the left neighbour's partial sum of chunk
    (r - s - 1 + shift) and adds its own piece of it. Returns (c, chunk): after the
    last step rank r holds chunk c = (r + 1 + shift) mod p reduced over every rank."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    i0 = (r + shift) % p
    partial = flat[cut[i0]:cut[i0 + 1]]  # step 0 sends my own piece
    spare = None
    if comm.prefers_out and p > 1:  # two buffers: one on the wire, one being received
        widest = max(cut[i + 1] - cut[i] for i in range(p))
        spare = [buffer_xp(comm, flat).empty(widest, flat.dtype) for _ in range(2)]
    for s in range(p - 1):
        ri = (r - s - 1 + shift) % p
        into = spare[s % 2][: cut[ri + 1] - cut[ri]] if spare else None
        got = pass_along(comm, partial, right, left, into=into, give=s > 0)
        reduce_(comm, got, flat[cut[ri]:cut[ri + 1]], op)  # add my piece of chunk ri
        partial = got
    return (r + 1 + shift) % p, partial


def _ring_all_gather(comm, acc, cut, owned, first=None):
    """p-1 steps round the ring, each rank passing on the chunk it received last;
    rank r starts with chunk ``owned`` complete (in ``acc``, or ``first``) and ends
    with every chunk in ``acc``."""
    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    cur = acc[cut[owned]:cut[owned + 1]] if first is None else first
    for s in range(p - 1):
        ri = (owned - s - 1) % p
        cur = pass_along(comm, cur, right, left, into=acc[cut[ri]:cut[ri + 1]], give=s > 0 or first is not None)
    if p > 1 and not comm.prefers_out:
        release(comm, cur)


def ring(comm, x, op, out=None):
    """Ring all-reduce = reduce-scatter + all-gather round a ring (Patarasuk and Yuan
    2009; Baidu, Gibiansky 2017). Each rank sends exactly 2(p-1)/p of the data, however
    large p is: 2(p-1) alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma (bandwidth-optimal)."""
    p = comm.world_size
    flat = x.reshape(-1)
    acc = comm.xp.empty_like(flat) if out is None else out.reshape(-1)
    cut = bounds(flat.size, p)
    owned, chunk = _ring_reduce_scatter(comm, flat, cut, op, 0)
    acc[cut[owned]:cut[owned + 1]] = chunk
    _ring_all_gather(comm, acc, cut, owned, first=chunk if p > 1 else None)
    res = finish(acc, op, p)
    return out if res is acc and out is not None else res.reshape(x.shape)


ring.accepts_out = True


def recursive_doubling(comm, x, op):
    """In round k rank r swaps its whole vector with rank r XOR 2^k and reduces:
    lg p (alpha + n beta + n gamma). Latency-optimal; MPICH's choice for short messages.
    World sizes that are not powers of two fold the extra ranks in first (2 more steps)."""
    acc = x.reshape(-1).copy()
    pof2, v, real_of = fold_in(comm, acc, op)
    if v >= 0:
        mask = 1
        while mask < pof2:
            dst = real_of(v ^ mask)
            reduce_(comm, acc, sendrecv(comm, acc, dst, dst), op)
            mask <<= 1
    acc = fold_out(comm, acc)
    return finish(acc, op, comm.world_size).reshape(x.shape)


def halve(comm, acc, cut, v, pof2, real_of, op):
    """Recursive halving over the pof2 ranks left after folding: in each round keep
    half of the chunks still held, send the other half to rank v XOR mask and reduce
    what comes back. Returns (lo, hi): the chunks this rank ends up owning (just v)."""
    lo, hi = 0, pof2
    mask = pof2 >> 1
    while mask >= 1:
        dst = real_of(v ^ mask)
        mid = (lo + hi) // 2
        keep, give = ((lo, mid), (mid, hi)) if not v & mask else ((mid, hi), (lo, mid))
        got = sendrecv(comm, acc[cut[give[0]]:cut[give[1]]], dst, dst)
        reduce_(comm, acc[cut[keep[0]]:cut[keep[1]]], got, op)
        lo, hi = keep
        mask >>= 1
    return lo, hi


def double(comm, acc, cut, v, lo, hi, pof2, real_of):
    """Recursive doubling of what each rank owns: swap your chunks [lo, hi) with rank
    v XOR mask, which holds the neighbouring ones, until everyone has all pof2."""
    mask = 1
    while mask < pof2:
        dst = real_of(v ^ mask)
        width = hi - lo
        olo = lo + width if not v & mask else lo - width
        sendrecv(comm, acc[cut[lo]:cut[hi]], dst, dst, out=acc[cut[olo]:cut[olo + width]])
        lo, hi = min(lo, olo), max(hi, olo + width)
        mask <<= 1


def rabenseifner(comm, x, op):
    """Reduce-scatter by recursive halving, then all-gather by recursive doubling
    (Rabenseifner 2004): 2 lg p alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma.
    MPICH's choice for long messages. Non-powers of two fold in as recursive doubling does."""
    acc = x.reshape(-1).copy()
    pof2, v, real_of = fold_in(comm, acc, op)
    if v >= 0:
        cut = bounds(acc.size, pof2)
        lo, hi = halve(comm, acc, cut, v, pof2, real_of, op)
        double(comm, acc, cut, v, lo, hi, pof2, real_of)
    acc = fold_out(comm, acc)
    return finish(acc, op, comm.world_size).reshape(x.shape)
