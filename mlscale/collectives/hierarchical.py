"""Hierarchical (two-level) all-reduce for clusters of multi-GPU nodes.

Inside a node, GPUs talk over fast links (NVLink: about 1 us and hundreds of GB/s);
between nodes, over the network (InfiniBand or Ethernet: several us and tens of GB/s).
A flat ring of p = N * g ranks crosses a slow link in every one of its 2(p-1) steps,
and each step waits for its slowest hop:

    flat ring       2(p-1) (a_s + n/p b_s)

The two-level scheme (Horovod's hierarchical all-reduce; NCCL's tree/ring mix; Jia et al.
2018, "Highly scalable deep learning training system with mixed-precision") keeps most
steps on the fast links and sends only 1/g of the vector across the network, on g
links at once (one per GPU: rail-optimized clusters have a network card per GPU):

    1. reduce-scatter inside each node       (g-1) (a_f + n/g b_f)
    2. all-reduce of the 1/g shard between
       the g ranks with the same local rank  2(N-1) (a_s + n/(gN) b_s)     (ring)
    3. all-gather inside each node           (g-1) (a_f + n/g b_f)

Ranks are numbered node by node: rank = node * ranks_per_node + local_rank, as
``mpiexec`` places them with a hostfile and as :meth:`mlscale.NetworkModel.cluster`
models them.

    def program(comm):
        h = Hierarchy(comm, ranks_per_node=4)          # splits once: h.intra, h.inter
        return h.all_reduce(np.ones(1 << 20, np.float32))
    ms.launch(program, 8, network=ms.NetworkModel.cluster(ranks_per_node=4))
"""
from __future__ import annotations

from ..comm.errors import CommError


class Hierarchy:
    """The two sub-communicators of a node-by-node rank layout.

    ``intra``: the ranks of this node (``ranks_per_node`` of them, ordered by local rank);
    ``inter``: the ranks with this local rank on every node (one per node).
    Build it once and reuse it: a split is itself a collective (free on ``sim``,
    one all-gather on MPI)."""

    def __init__(self, comm, ranks_per_node):
        p = comm.world_size
        if int(ranks_per_node) != ranks_per_node or ranks_per_node < 1:
            raise ValueError(f"Hierarchy: ranks_per_node must be a whole number >= 1, got {ranks_per_node!r}")
        g = int(ranks_per_node)
        if p % g:
            raise CommError(
                f"rank {comm.rank}: world_size {p} is not a whole number of nodes of {g} ranks; "
                f"launch a multiple of {g} ranks or pick ranks_per_node among {_divisors(p)}"
            )
        self.comm = comm
        self.ranks_per_node = g
        self.num_nodes = p // g
        self.node, self.local_rank = divmod(comm.rank, g)
        self.intra = comm.split(self.node, key=self.local_rank)
        self.inter = comm.split(self.local_rank, key=self.node)

    def all_reduce(self, x, op="sum", intra_algorithm="ring", inter_algorithm="ring"):
        """Reduce-scatter in the node, all-reduce the shard across nodes, all-gather in
        the node. Equals ``comm.all_reduce(x, op)`` for every op (mean included: every
        node has the same number of ranks, so a mean of node means is the mean)."""
        x = self.comm._as_array(x)
        if x.size == 0:
            return x.copy()
        shard = self.intra.reduce_scatter(x, op=op, algorithm=intra_algorithm)  # (n/g,) this rank's chunk
        shard = self.inter.all_reduce(shard, op=op, algorithm=inter_algorithm)  # same chunk, every node
        flat = self.intra.all_gather(shard, algorithm=intra_algorithm)  # (n,) np.array_split order
        return flat.reshape(x.shape)

    def free(self):
        """Release the two sub-communicators (MPI_Comm_free on MPI; nothing on sim). Each
        holds MPI context ids, of which MPICH has about 2000: free the splits you stop using."""
        for sub in (self.intra, self.inter):
            free = getattr(sub, "free", None)
            if free is not None:
                free()


def all_reduce(comm, x, ranks_per_node, op="sum"):
    """One-off hierarchical all-reduce (splits the communicator on every call; keep a
    :class:`Hierarchy` to reuse the split)."""
    h = Hierarchy(comm, ranks_per_node)
    try:
        return h.all_reduce(x, op)
    finally:
        h.free()  # on MPI each split holds context ids: MPICH has about 2000


def _divisors(p):
    return [d for d in range(1, p + 1) if p % d == 0]


def cost(num_nodes, ranks_per_node, n, intra, inter, gamma=0.0):
    """Seconds for the hierarchical all-reduce of n bytes: intra = (alpha, beta) of the
    links inside a node, inter = (alpha, beta) between nodes. Exact on ``sim`` when n is
    divisible by the world size (ring in every stage)."""
    from . import cost as _cost

    g, N = ranks_per_node, num_nodes
    (af, bf), (as_, bs) = intra, inter
    return (
        _cost.reduce_scatter("ring", g, n, af, bf, gamma)
        + _cost.all_reduce("ring", N, n / g, as_, bs, gamma)
        + _cost.all_gather("ring", g, n, af, bf)
    )


def flat_ring_cost(num_nodes, ranks_per_node, n, intra, inter, gamma=0.0):
    """Seconds for a flat ring all-reduce over the same cluster: with more than one node
    every one of its 2(p-1) steps has a slow hop, which sets the pace."""
    from . import cost as _cost

    p = num_nodes * ranks_per_node
    a, b = inter if num_nodes > 1 else intra
    return _cost.all_reduce("ring", p, n, a, b, gamma)


def cross_node_bytes(trace, ranks_per_node):
    """Bytes each rank sent to a rank on another node, from a sim run's trace (ranks
    numbered node by node): what crossed the network, per network card."""
    sent = [0] * trace.world_size
    for m in trace.messages:
        if m.src // ranks_per_node != m.dst // ranks_per_node:
            sent[m.src] += m.nbytes
    return sent


def slow_link_bytes(num_nodes, ranks_per_node, n, algorithm="hierarchical"):
    """Bytes one rank sends over the network (between nodes) in one all-reduce of n bytes.
    Flat ring: the one rank per node whose right neighbour lives on the next node sends
    2(p-1)/p n across; hierarchical: every rank sends 2(N-1)/N n/g across."""
    g, N = ranks_per_node, num_nodes
    p = g * N
    if N == 1:
        return 0.0
    if algorithm == "hierarchical":
        return 2 * (N - 1) / N * n / g
    if algorithm == "ring":
        return 2 * (p - 1) / p * n
    raise ValueError(f"slow_link_bytes: unknown algorithm {algorithm!r}; use 'hierarchical' or 'ring'")
