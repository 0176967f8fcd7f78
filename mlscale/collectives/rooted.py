"""Collectives with a root: broadcast, reduce, gather, scatter; and the barrier.

Linear versions first (the root talks to everyone, one after the other), then the
binomial trees (ceil(lg p) rounds), as in MPICH.
"""
from ._p2p import recv, reduce_, send, sendrecv
from ._reduce_ops import finish


def broadcast_linear(comm, x, root):
    """The root sends x to every other rank in turn: (p-1)(alpha + n beta) on its link."""
    if comm.rank == root:
        for dst in range(comm.world_size):
            if dst != root:
                send(comm, x, dst)
        return x.copy()
    return recv(comm, root).reshape(x.shape)


def broadcast_tree(comm, x, root):
    """Binomial tree: in round k every rank that has the data sends it 2^k ranks on:
    ceil(lg p)(alpha + n beta). Non-root ranks' x only gives the shape."""
    p, r = comm.world_size, comm.rank
    vr = (r - root) % p
    y = x.copy() if r == root else None
    mask = 1
    while mask < p:  # receive from the parent: the rank that differs in our lowest set bit
        if vr & mask:
            y = recv(comm, (vr - mask + root) % p)
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:  # then pass on to our children, largest subtree first
        if vr + mask < p:
            send(comm, y, (vr + mask + root) % p)
        mask >>= 1
    return y.reshape(x.shape)


def reduce_linear(comm, x, root, op):
    """Every rank sends x to the root, which reduces them in rank order."""
    p, r = comm.world_size, comm.rank
    if r != root:
        send(comm, x.reshape(-1), root)
        return None
    inputs = {src: recv(comm, src) for src in range(p) if src != root}
    acc = None
    for src in range(p):  # rank order: the same bits whoever is root
        b = x.reshape(-1) if src == root else inputs[src]
        if acc is None:
            acc = b.copy()
        else:
            reduce_(comm, acc, b, op)
    return finish(acc, op, p).reshape(x.shape)


def reduce_tree(comm, x, root, op):
    """Binomial tree: in round k, ranks with bit k set send their partial result to the
    rank 2^k below and drop out: ceil(lg p)(alpha + n beta + n gamma)."""
    p, r = comm.world_size, comm.rank
    vr = (r - root) % p
    acc = x.reshape(-1).copy()
    mask = 1
    while mask < p:
        if vr & mask:
            send(comm, acc, (vr - mask + root) % p)
            return None
        if vr + mask < p:
            reduce_(comm, acc, recv(comm, (vr + mask + root) % p), op)
        mask <<= 1
    return finish(acc, op, p).reshape(x.shape)


def gather_linear(comm, x, root):
    """The root receives every rank's x (shapes may differ): a list on the root."""
    if comm.rank != root:
        send(comm, x, root)
        return None
    return [x.copy() if src == root else recv(comm, src) for src in range(comm.world_size)]


def scatter_linear(comm, xs, root):
    """The root sends xs[r] to each rank r."""
    if comm.rank == root:
        for dst in range(comm.world_size):
            if dst != root:
                send(comm, xs[dst], dst)
        return xs[root].copy()
    return recv(comm, root)


def barrier_dissemination(comm):
    """Dissemination barrier (Hensgen, Finkel and Manber 1988): in round k rank r
    signals r + 2^k and waits for r - 2^k; ceil(lg p) rounds of empty messages."""
    p, r = comm.world_size, comm.rank
    token = comm.xp.zeros(0, dtype="u1")
    k = 1
    while k < p:
        sendrecv(comm, token, (r + k) % p, (r - k) % p)
        k <<= 1
