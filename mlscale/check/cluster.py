"""Checker for the many-machines exercise (notebook 11): a two-level all-reduce."""
from __future__ import annotations

import numpy as np

from ..comm import NetworkModel, launch
from ..collectives.hierarchical import cross_node_bytes
from .collectives import _check_values
from .core import CheckResult, register, try_case

HINT = """\
Three collectives on two sub-communicators (ranks are numbered node by node):
  node, local = divmod(comm.rank, ranks_per_node)
  intra = comm.split(node, key=local)      # the ranks of my node
  inter = comm.split(local, key=node)      # my counterparts, one on every node
  1. shard = intra.reduce_scatter(x)                      # fast links: my 1/g of the node's sum
  2. shard = inter.all_reduce(shard, algorithm="ring")    # slow links: 1/g of the data, g cards at once
  3. return intra.all_gather(shard).reshape(x.shape)      # fast links: everyone gets everything
Still stuck? from mlscale.check import solution; solution("hierarchical_all_reduce")"""

LAYOUTS = ((1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (2, 4))  # (nodes, ranks_per_node)


def hierarchical_all_reduce(fn, layouts=LAYOUTS, verbose=True):
    """Check a learner's ``fn(comm, x, ranks_per_node) -> sum over ranks of x``.

    On simulated clusters (nodes x ranks_per_node from ``layouts``), lengths 1, 5 and 1000:
    every rank must get the sum over all ranks, and the bytes crossing between nodes must
    be those of a two-level scheme: at most 2(N-1) g ceil(n/g) elements in all (a flat
    ring or recursive doubling sends more). Both two-level schemes pass: reduce-scatter in
    the node, all-reduce across, all-gather (every card busy), and the leader scheme (reduce
    to one rank per node, all-reduce among the leaders, broadcast), which gets a note that
    it leaves g-1 cards of every node idle.
    """
    res = CheckResult("hierarchical_all_reduce")
    for nodes, g in layouts:
        p = nodes * g
        net = NetworkModel.cluster(g)
        for n in (1, 5, 1000):
            case = f"{nodes} node(s) x {g} ranks, n={n}"
            xs = [np.random.default_rng(31 * r + n).standard_normal(n) for r in range(p)]
            want = np.sum(np.stack(xs), axis=0)

            def prog(comm):
                return fn(comm, xs[comm.rank].copy(), g)

            def judge(out):
                bad = _check_values(out, want, np.float64)
                if bad:
                    bad += _partial_sum(out, xs, nodes, g)
                bad = bad or _slow_traffic(out.trace, nodes, g, n, 8)
                note = None if bad else _idle_cards(out.trace, nodes, g, n)
                if note and note not in res.notes:
                    res.notes.append(note)
                return bad

            if not try_case(res, case, lambda: launch(prog, p, network=net), judge):
                return res.done(verbose)
    return res.done(verbose)


def _partial_sum(out, xs, nodes, g):
    """Name a wrong result that is the sum over one node, or over one rank per node."""
    for r, y in enumerate(out):
        if y is None:
            return ""
        y = np.asarray(y)
        if y.shape != xs[0].shape:
            return f" (rank {r}'s result must be the whole vector: all-gather the shards in the node)"
        node, local = divmod(r, g)
        if nodes > 1 and np.allclose(y, sum(xs[node * g:(node + 1) * g]), rtol=1e-10, atol=1e-10):
            return (f": rank {r} holds its node's sum only: the step across nodes is missing "
                    "(all-reduce the shard with the same local rank on every node)")
        if g > 1 and np.allclose(y, sum(xs[local::g]), rtol=1e-10, atol=1e-10):
            return (f": rank {r} holds the sum over its counterparts on the other nodes only: the "
                    "step inside the node is missing")
    return ""


def _slow_traffic(trace, nodes, g, n, itemsize):
    p = nodes * g
    slow = cross_node_bytes(trace, g)
    limit = 2 * (nodes - 1) * g * (-(-n // g)) * itemsize
    if sum(slow) > limit:
        return (
            f"{sum(slow)} bytes crossed between nodes (per rank {slow}); the two-level scheme sends "
            f"at most {limit}: reduce inside the node first, send only 1/{g} of the vector across"
        )
    return None


def _idle_cards(trace, nodes, g, n):
    """A right answer that leaves network cards idle (the leader scheme: reduce in the node,
    all-reduce among one leader per node, broadcast) is accepted, with this note."""
    slow = cross_node_bytes(trace, g)
    if nodes > 1 and n >= g and g > 1 and min(slow) == 0:
        return (f"right, and few bytes across nodes; but only some ranks used their network card (e.g. "
                f"{nodes} x {g}: per rank {slow}). On nodes with one card per GPU, the reduce-scatter "
                f"version sends 1/{g} of the vector on each of the {g} cards at once: {g}x less time on "
                f"the slow links than one leader per node")
    return None


def solution_hierarchical_all_reduce(comm, x, ranks_per_node):
    """Two-level all-reduce: reduce-scatter in the node, ring across nodes, all-gather."""
    node, local = divmod(comm.rank, ranks_per_node)
    intra = comm.split(node, key=local)  # the ranks of my node, by local rank
    inter = comm.split(local, key=node)  # my counterparts on every node
    shard = intra.reduce_scatter(x)  # (n/g,) my chunk of my node's sum
    shard = inter.all_reduce(shard, algorithm="ring")  # that chunk summed over nodes
    return intra.all_gather(shard).reshape(x.shape)  # (n,) every chunk, in order


register("hierarchical_all_reduce", HINT, solution_hierarchical_all_reduce)
