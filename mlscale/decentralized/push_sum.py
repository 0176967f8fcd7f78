"""Push-sum (Kempe, Dobra and Gehrke 2003): averaging on a directed graph.

On a directed graph whose out-degrees differ, no doubly stochastic W may exist with
the graph's sparsity, and plain gossip then converges to a weighted average, not the
average. Push-sum lets each rank keep a value s_i (start: x_i) and a weight w_i
(start: 1). Every round rank i splits both equally between itself and its d_i
out-neighbors and adds up what it receives:

    s(t+1) = P s(t),   w(t+1) = P w(t),   P_ij = 1/(d_j + 1) on edges j -> i and j = i

P is column-stochastic, so sum_i s_i and sum_i w_i never change, and on a strongly
connected graph (with self loops) P^t -> pi 1^T: s_i -> pi_i sum(x), w_i -> pi_i p,
so the ratio z_i = s_i / w_i -> sum(x)/p, the average, at every rank.

Each round a rank sends one message of (n + 1) numbers (s and w together) to each
out-neighbor: degree * (n + 1) * itemsize bytes.
"""
from __future__ import annotations

from ..collectives._reduce_ops import get_xp
from .gossip import _check_x, weighted_sum
from .topology import make_topology


PUSH_SUM_TAG = 4343


def push_sum(comm, x, topology, rounds, t0=0, return_weights=False):
    """Run ``rounds`` rounds of push-sum on ``topology`` (directed allowed; a name or a
    Topology) starting from this rank's ``x``. Returns z = s/w, this rank's estimate of
    the average of the x's (and s, w if ``return_weights``)."""
    _check_x(comm, x)
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"push_sum: rounds={rounds!r} must be a whole number >= 0")
    topo = make_topology(topology, comm.world_size)
    if not topo.is_connected():
        raise ValueError(f"push_sum: {topo.name} is not strongly connected: some ranks never hear others")
    xp = get_xp(x)
    n = x.size
    sw = xp.empty(n + 1, dtype=x.dtype)             # [s | w] travel together
    sw[:n] = x.reshape(-1)
    sw[n] = 1.0
    for t in range(t0, t0 + int(rounds)):
        srcs = topo.in_neighbors(comm.rank, t)
        dsts = topo.out_neighbors(comm.rank, t)
        share = 1.0 / (len(dsts) + 1)
        with comm.label("push_sum"):
            recvs = [comm.irecv(j, PUSH_SUM_TAG) for j in srcs]
            half = sw * share                        # what each of us gets, me included
            sends = [comm.isend(half, k, PUSH_SUM_TAG) for k in dsts]
            got = [r.wait() for r in recvs]
            for s in sends:
                s.wait()
        sw = weighted_sum([half] + got, [1.0] * (len(got) + 1))
    s, w = sw[:n].reshape(x.shape), sw[n]
    z = s / w
    return (z, s, w) if return_weights else z
