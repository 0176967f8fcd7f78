"""Communication topologies: who talks to whom in decentralized learning.

A :class:`Topology` on ``world_size`` ranks is one directed graph, or a sequence of them
that repeats (time-varying graphs: round t uses graph ``t % period``). Edge j -> i means
rank j sends to rank i, so rank i's new value mixes ``x_i`` with the ``x_j`` of its
in-neighbors (row i of the mixing matrix). Undirected graphs have every edge both ways.

=====================  =========  ====================================  ================
topology               degree     world sizes                           source
=====================  =========  ====================================  ================
ring(p)                2          any                                   -
torus(p)               4          p = a*b with a, b >= 3                -
complete(p)            p - 1      any                                   -
star(p)                1 / p-1    any                                   -
exponential(p)         log2 p     any (closed-form rho: powers of two)  Ying et al. 2021
one_peer_exponential   1          powers of two (exact average)         Ying et al. 2021
erdos_renyi(p, prob)   random     any (resampled until connected)       -
directed_ring(p)       1          any (plus optional chords)            Kempe et al. 2003
=====================  =========  ====================================  ================

Degrees are out-degrees: how many messages a rank sends per gossip round.
"""
from __future__ import annotations

import math

import numpy as np


class Topology:
    """A (possibly time-varying) graph on ``world_size`` ranks.

    adjacency  one (p, p) boolean matrix, or a list of them (one per round of the
               period): ``A[i, j]`` is True when rank j sends to rank i (no self loops)
    directed   False when every A is symmetric (then ``neighbors`` is well defined)
    default_mixing  the weight rule ``mixing_matrix`` uses when given none
    """

    def __init__(self, name, adjacency, default_mixing="metropolis"):
        mats = adjacency if isinstance(adjacency, (list, tuple)) else [adjacency]
        mats = [np.array(a, dtype=bool) for a in mats]
        if not mats:
            raise ValueError(f"{name}: a topology needs at least one adjacency matrix")
        p = mats[0].shape[0]
        for a in mats:
            if a.shape != (p, p):
                raise ValueError(f"{name}: adjacency must be square (p, p), got {a.shape}")
            if a.diagonal().any():
                raise ValueError(f"{name}: no self loops in the adjacency (the mixing matrix adds them)")
        self.name = name
        self.world_size = p
        self._adj = mats
        self.period = len(mats)
        self.directed = any(not np.array_equal(a, a.T) for a in mats)
        self.default_mixing = default_mixing
        # neighbor lists, sorted, per round of the period
        self._in = [[tuple(np.flatnonzero(a[i]).tolist()) for i in range(p)] for a in mats]
        self._out = [[tuple(np.flatnonzero(a[:, j]).tolist()) for j in range(p)] for a in mats]

    # ---------------------------------------------------------------- the graph
    @property
    def time_varying(self):
        return self.period > 1

    def adjacency(self, t=0):
        """(p, p) bool: ``A[i, j]`` is True when rank j sends to rank i in round t."""
        return self._adj[t % self.period].copy()

    def in_neighbors(self, rank, t=0):
        """Ranks that send to ``rank`` in round ``t`` (whose values ``rank`` mixes in)."""
        return self._in[t % self.period][self._rank(rank)]

    def out_neighbors(self, rank, t=0):
        """Ranks that ``rank`` sends to in round ``t``."""
        return self._out[t % self.period][self._rank(rank)]

    def neighbors(self, rank, t=0):
        """Neighbors of ``rank`` in an undirected topology."""
        if self.directed:
            raise ValueError(f"{self.name} is directed: use in_neighbors / out_neighbors")
        return self.in_neighbors(rank, t)

    def degree(self, rank, t=0):
        """Messages ``rank`` sends per gossip round (its out-degree)."""
        return len(self.out_neighbors(rank, t))

    def degrees(self, t=0):
        return [self.degree(r, t) for r in range(self.world_size)]

    def max_degree(self):
        return max((max(self.degrees(t), default=0) for t in range(self.period)), default=0)

    def is_connected(self):
        """Strongly connected (the union graph over the period, for time-varying ones)."""
        a = np.zeros_like(self._adj[0])
        for m in self._adj:
            a |= m
        return _strongly_connected(a)

    def edges(self, t=0):
        """List of (src, dst) pairs of round t."""
        a = self._adj[t % self.period]
        return [(int(j), int(i)) for i, j in zip(*np.nonzero(a))]

    def mixing_matrix(self, rule=None, t=0):
        """The mixing matrix of round ``t`` by ``rule`` (default: this topology's)."""
        from .mixing import mixing_matrix

        return mixing_matrix(self, rule if rule is not None else self.default_mixing, t=t)

    def _rank(self, rank):
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise ValueError(f"{self.name}: rank={rank!r} is not in 0..{self.world_size - 1}")
        return int(rank)

    def __repr__(self):
        kind = "directed" if self.directed else "undirected"
        tv = f", time-varying (period {self.period})" if self.time_varying else ""
        return f"<Topology {self.name}: {self.world_size} ranks, {kind}, max degree {self.max_degree()}{tv}>"


def _strongly_connected(a):
    p = a.shape[0]

    def reach(m):
        seen, todo = {0}, [0]
        while todo:
            i = todo.pop()
            for j in np.flatnonzero(m[:, i]):  # edges i -> j
                if j not in seen:
                    seen.add(int(j))
                    todo.append(int(j))
        return len(seen) == p

    return reach(a) and reach(a.T)


def _check_p(name, p, minimum=1):
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < minimum:
        raise ValueError(f"{name}: world_size={p!r} must be a whole number >= {minimum}")
    return int(p)


def _from_offsets(p, offsets):
    """Circulant graph: rank i receives from i - s for every s in offsets (mod p)."""
    a = np.zeros((p, p), dtype=bool)
    for i in range(p):
        for s in offsets:
            j = (i - s) % p
            if j != i:
                a[i, j] = True
    return a


def from_edges(world_size, edges, directed=False, name="graph", default_mixing=None):
    """A topology from a list of (src, dst) edges (both ways unless ``directed``)."""
    p = _check_p(name, world_size)
    a = np.zeros((p, p), dtype=bool)
    for src, dst in edges:
        if not (0 <= src < p and 0 <= dst < p) or src == dst:
            raise ValueError(f"{name}: edge ({src}, {dst}) is not between two different ranks of 0..{p - 1}")
        a[dst, src] = True
        if not directed:
            a[src, dst] = True
    return Topology(name, a, default_mixing or ("push_sum" if directed else "metropolis"))


def ring(world_size):
    """Each rank talks to rank - 1 and rank + 1 (degree 2; 1 for p = 2, 0 for p = 1)."""
    p = _check_p("ring", world_size)
    return Topology(f"ring({p})", _from_offsets(p, (1, -1)))


def directed_ring(world_size, chords=()):
    """Each rank sends to rank + 1 only; ``chords`` adds extra directed edges (src, dst),
    which makes the out-degrees unequal: the case push-sum exists for."""
    p = _check_p("directed_ring", world_size)
    a = _from_offsets(p, (1,))
    for src, dst in chords:
        if not (0 <= src < p and 0 <= dst < p) or src == dst:
            raise ValueError(f"directed_ring: chord ({src}, {dst}) is not between two ranks of 0..{p - 1}")
        a[dst, src] = True
    extra = f", {len(chords)} chords" if chords else ""
    return Topology(f"directed_ring({p}{extra})", a, "push_sum")


def torus_shape(world_size):
    """The most square a x b = p with a, b >= 3, or None."""
    best = None
    for a in range(3, math.isqrt(world_size) + 1):
        if world_size % a == 0 and world_size // a >= 3:
            best = (a, world_size // a)
    return best


def torus(world_size, shape=None):
    """2-D torus (a x b grid with wrap-around): rank (r, c) talks to its 4 neighbors.
    Needs a, b >= 3 (with 2, the two wrap-around neighbors are the same rank)."""
    p = _check_p("torus", world_size)
    if shape is None:
        shape = torus_shape(p)
        if shape is None:
            ok = [n for n in range(9, 65) if torus_shape(n)]
            raise ValueError(
                f"torus: world_size={p} is not a x b with a, b >= 3; use one of {ok[:10]}... "
                "(9, 12, 15, 16, ...), or ring / exponential for this p"
            )
    rows, cols = (int(s) for s in shape)
    if rows * cols != p or rows < 3 or cols < 3:
        raise ValueError(f"torus: shape={shape} must be a x b = world_size={p} with a, b >= 3")
    a = np.zeros((p, p), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                a[i, ((r + dr) % rows) * cols + (c + dc) % cols] = True
    t = Topology(f"torus({rows}x{cols})", a)
    t.shape = (rows, cols)
    return t


def complete(world_size):
    """Everyone talks to everyone: one round of uniform weights is the exact average."""
    p = _check_p("complete", world_size)
    a = ~np.eye(p, dtype=bool)
    return Topology(f"complete({p})", a)


def star(world_size, center=0):
    """Rank ``center`` talks to every other rank; the others only to it."""
    p = _check_p("star", world_size)
    if not 0 <= center < p:
        raise ValueError(f"star: center={center} is not a rank of 0..{p - 1}")
    a = np.zeros((p, p), dtype=bool)
    a[center, :] = True
    a[:, center] = True
    a[center, center] = False
    return Topology(f"star({p})", a)


def exponential(world_size):
    """Static exponential graph (Ying et al. 2021): rank i sends to i + 2^k (mod p) for
    k = 0 .. tau - 1, tau = ceil(log2 p). Directed, every rank has in- and out-degree tau,
    so uniform weights 1/(tau + 1) are doubly stochastic. For p a power of two,
    rho = 1 - 2/(1 + log2 p)."""
    p = _check_p("exponential", world_size)
    tau = math.ceil(math.log2(p)) if p > 1 else 0
    return Topology(f"exponential({p})", _from_offsets(p, [2**k for k in range(tau)]), "uniform")


def one_peer_exponential(world_size):
    """One-peer exponential graph (Ying et al. 2021): in round t rank i sends to
    i + 2^(t mod tau) and receives from i - 2^(t mod tau), tau = log2 p; weights 1/2.
    One message per round, and the product of tau rounds is exactly 11^T/p: tau rounds
    average exactly. Needs p a power of two."""
    p = _check_p("one_peer_exponential", world_size)
    if p & (p - 1):
        lo = 1 << (p.bit_length() - 1)
        raise ValueError(
            f"one_peer_exponential: world_size={p} is not a power of two (exact averaging in "
            f"log2 p rounds needs one); use {lo} or {2 * lo}, or the static exponential(p)"
        )
    tau = int(math.log2(p))
    mats = [_from_offsets(p, (2**k,)) for k in range(tau)] or [np.zeros((1, 1), dtype=bool)]
    return Topology(f"one_peer_exponential({p})", mats, "uniform")


def erdos_renyi(world_size, prob, seed=0, max_tries=100):
    """Random undirected graph: each pair is an edge with probability ``prob``, drawn with
    ``seed`` and redrawn (same seed stream) until connected."""
    p = _check_p("erdos_renyi", world_size)
    if not 0 < prob <= 1:
        raise ValueError(f"erdos_renyi: prob={prob!r} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        upper = np.triu(rng.random((p, p)) < prob, k=1)
        a = upper | upper.T
        if _strongly_connected(a):
            return Topology(f"erdos_renyi({p}, {prob}, seed={seed})", a)
    raise ValueError(
        f"erdos_renyi: no connected graph in {max_tries} draws with p={p}, prob={prob}; "
        f"raise prob above about log(p)/p = {math.log(max(p, 2)) / p:.3f}"
    )


TOPOLOGIES = {
    "ring": ring,
    "torus": torus,
    "complete": complete,
    "star": star,
    "exponential": exponential,
    "one_peer_exponential": one_peer_exponential,
    "directed_ring": directed_ring,
}


def make_topology(topology, world_size):
    """A Topology from a Topology (checked against world_size) or a name in TOPOLOGIES."""
    if isinstance(topology, Topology):
        if topology.world_size != world_size:
            raise ValueError(
                f"topology {topology.name} is for {topology.world_size} ranks but the communicator "
                f"has {world_size}; build it with world_size={world_size}"
            )
        return topology
    if isinstance(topology, str):
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; use one of {sorted(TOPOLOGIES)} or a Topology")
        return TOPOLOGIES[topology](world_size)
    raise TypeError(f"topology must be a Topology or a name in {sorted(TOPOLOGIES)}, got {type(topology).__name__}")
