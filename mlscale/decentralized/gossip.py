"""Gossip averaging on a Communicator: every rank talks to its neighbors only.

One round of gossip (Xiao and Boyd 2004; the averaging step of D-PSGD, Lian et al.
2017) is row ``rank`` of ``x(t+1) = W x(t)``:

    x_i  <-  W_ii x_i + sum_{j in in_neighbors(i)} W_ij x_j

Each rank sends its x to each out-neighbor (degree messages of nbytes each) and mixes
what arrives with :func:`mlscale.ops.weighted_sum`. Compare one ring all-reduce: 2(p-1)
messages per rank, 2(p-1)/p * nbytes, exact. Gossip is cheap per round and only
approximate; rho(W - 11^T/p) says how fast the rounds close the gap.

Two versions, naive first:

- :func:`gossip_naive`: every rank gathers every x (one all-gather) and applies its row
  of W. Obviously right, O(p) traffic per rank: the oracle.
- :func:`gossip`: neighbors only. Every round posts all receives first, then all sends
  (non-blocking), then waits: no rank blocks on a neighbor that is blocked on it, even
  for messages above the eager limit (rendezvous) and on any graph.
"""
from __future__ import annotations

import numpy as np

from .mixing import validate_mixing_matrix
from .topology import make_topology


def weighted_sum(xs, weights, out=None, **kwargs):
    """mlscale.ops.weighted_sum, imported on first use: numba loads then, not on import."""
    from ..ops import weighted_sum as kernel

    return kernel(xs, weights, out=out, **kwargs)

GOSSIP_TAG = 4242


class Gossip:
    """The plan of gossip on one topology: each round's mixing matrix (checked once),
    and this rank's neighbors and weights. ``mixing`` is a rule name (default: the
    topology's), one (p, p) matrix, or a function ``t -> W`` for time-varying ones."""

    def __init__(self, topology, world_size, mixing=None, check=True):
        self.topology = make_topology(topology, world_size)
        self.world_size = world_size
        self.mixing = mixing
        topo = self.topology
        self._W = []
        for t in range(topo.period):
            if mixing is None or isinstance(mixing, str):
                W = topo.mixing_matrix(mixing, t)
            elif callable(mixing):
                W = np.asarray(mixing(t), dtype=np.float64)
            else:
                if topo.time_varying:
                    raise ValueError(
                        f"{topo.name} changes every round: pass mixing= as a rule name or a function "
                        "t -> W, not one matrix"
                    )
                W = np.asarray(mixing, dtype=np.float64)
            if check:
                try:
                    validate_mixing_matrix(W, topo, t)
                except ValueError as e:
                    raise ValueError(f"gossip on {topo.name}, round {t}: {e}") from None
            self._W.append(W)

    def matrix(self, t=0):
        return self._W[t % self.topology.period]

    def plan(self, rank, t=0):
        """(in_neighbors, out_neighbors, weights): weights[0] is W_ii, then W_ij in order."""
        topo = self.topology
        srcs = topo.in_neighbors(rank, t)
        W = self.matrix(t)
        return srcs, topo.out_neighbors(rank, t), [W[rank, rank]] + [W[rank, j] for j in srcs]


def gossip_round(comm, x, plan, t=0, out=None, tag=GOSSIP_TAG):
    """One round: send ``x`` to every out-neighbor, receive from every in-neighbor,
    return ``W_ii x + sum_j W_ij x_j`` (into ``out`` if given; ``out`` may be ``x``)."""
    srcs, dsts, weights = plan.plan(comm.rank, t)
    with comm.label("gossip"):
        recvs = [comm.irecv(j, tag) for j in srcs]      # receives first: nobody waits on a send
        sends = [comm.isend(x, k, tag) for k in dsts]
        got = [r.wait() for r in recvs]
        for s in sends:
            s.wait()                                     # x is free again (out may be x)
    return weighted_sum([x] + got, weights, out=out)


def gossip(comm, x, topology, mixing=None, rounds=1, t0=0, out=None):
    """``rounds`` rounds of gossip averaging of ``x`` (rounds t0, t0+1, ...): returns
    row ``comm.rank`` of ``W(t0+rounds-1) ... W(t0) X``, where X stacks every rank's x.

    topology  a Topology or a name ("ring", "torus", "exponential", ...)
    mixing    a rule name (default: the topology's), a (p, p) matrix, or ``t -> W``
    """
    _check_x(comm, x)
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"gossip: rounds={rounds!r} must be a whole number >= 0")
    plan = topology if isinstance(topology, Gossip) else Gossip(topology, comm.world_size, mixing)
    y = x.copy() if out is None else out
    if out is not None and out is not x:
        y[...] = x
    for t in range(t0, t0 + int(rounds)):
        gossip_round(comm, y, plan, t, out=y)
    return y


def gossip_naive(comm, x, W):
    """The oracle: all-gather every rank's x, return row ``comm.rank`` of W X."""
    _check_x(comm, x)
    W = np.asarray(W, dtype=np.float64)
    p = comm.world_size
    if W.shape != (p, p):
        raise ValueError(f"gossip_naive: W has shape {W.shape}, expected ({p}, {p})")
    X = comm.all_gather(x.reshape(1, -1)).reshape(p, *x.shape)   # (p, ...) every rank's x
    return weighted_sum([X[j] for j in range(p)], W[comm.rank])


def _check_x(comm, x):
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(
            f"rank {comm.rank}: gossip averages float arrays, got "
            f"{getattr(x, 'dtype', type(x).__name__)}: convert with x.astype(np.float32)"
        )
