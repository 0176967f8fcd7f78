"""Checkers for the decentralized-learning exercises (notebook 06).

1. ``metropolis_weights(adjacency) -> W``: the Metropolis mixing matrix of a graph.
2. ``gossip_step(comm, x, topology, W) -> x_new``: one round of gossip on send/recv,
   talking to neighbors only.
"""
from __future__ import annotations

import numpy as np

from ..comm import NetworkModel, launch
from ..decentralized import topology as T
from ..decentralized.mixing import metropolis
from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

METROPOLIS_HINT = """\
adjacency is a (p, p) boolean matrix, A[i, j] True when i and j are neighbors.
  d = A.sum(axis=1)                                   # degrees
  W = np.where(A, 1.0 / (1.0 + np.maximum.outer(d, d)), 0.0)
  then put on the diagonal what makes each row sum to 1: W[i, i] = 1 - sum_j W[i, j].
W is symmetric, so its columns sum to 1 too. Why 1 + max and not max: on an even ring
1/max(d_i, d_j) = 1/2 leaves W_ii = 0 and the eigenvalue -1: the ranks swap values forever.
Still stuck? from mlscale.check import solution; solution("metropolis_weights")"""

GOSSIP_HINT = """\
Row comm.rank of x_new = W x: mix your x with what your in-neighbors send.
  srcs = topology.in_neighbors(comm.rank); dsts = topology.out_neighbors(comm.rank)
  post the receives first: reqs = [comm.irecv(j) for j in srcs]
  then send without blocking: sends = [comm.isend(x, k) for k in dsts]
  got = [r.wait() for r in reqs]; for s in sends: s.wait()
  return W[r, r] * x + sum(W[r, j] * xj for j, xj in zip(srcs, got))
Blocking send then recv deadlocks above the eager limit (64 KiB): everybody sends, nobody
receives. Do not use all_reduce / all_gather: gossip talks to neighbors only.
Still stuck? from mlscale.check import solution; solution("gossip_step")"""


def metropolis_weights_solution(adjacency):
    A = np.asarray(adjacency, dtype=bool)
    d = A.sum(axis=1)
    W = np.where(A, 1.0 / (1.0 + np.maximum.outer(d, d)), 0.0)
    np.fill_diagonal(W, 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def gossip_step_solution(comm, x, topology, W):
    r = comm.rank
    srcs, dsts = topology.in_neighbors(r), topology.out_neighbors(r)
    reqs = [comm.irecv(j) for j in srcs]           # receives first: nobody waits on a send
    sends = [comm.isend(x, k) for k in dsts]
    got = [q.wait() for q in reqs]
    for s in sends:
        s.wait()
    out = W[r, r] * x
    for j, xj in zip(srcs, got):
        out = out + W[r, j] * xj
    return out


def _graphs():
    yield "ring(2)", T.ring(2)
    yield "ring(6)", T.ring(6)
    yield "ring(7)", T.ring(7)
    yield "star(5)", T.star(5)
    yield "torus(3x4)", T.torus(12)
    yield "complete(4)", T.complete(4)
    yield "erdos_renyi(9)", T.erdos_renyi(9, 0.4, seed=1)
    yield "one rank", T.ring(1)


def metropolis_weights(fn, verbose=True):
    """Check ``fn(adjacency) -> W``, the Metropolis weights W_ij = 1/(1 + max(d_i, d_j))
    on edges and W_ii = 1 - sum of the row, on rings (even and odd), a star, a torus,
    a complete graph, a random graph and a single rank."""
    res = CheckResult("metropolis_weights")
    for case, topo in _graphs():
        res.cases += 1
        A = topo.adjacency()
        want = metropolis(topo)
        got = run_case(res, case, lambda: fn(A.copy()))
        if got is NOT_IMPLEMENTED:
            return res.done(verbose)
        if got is None:
            if not any(f.startswith(case) for f in res.failures):
                res.failures.append(f"{case}: returned None; return the (p, p) matrix W")
            continue
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            res.failures.append(f"{case}: W has shape {got.shape}, expected {want.shape}")
            continue
        if not np.allclose(got, want, atol=1e-12):
            diff = np.abs(got - want)
            off = diff * (1 - np.eye(len(A)))             # report a wrong edge before the diagonal
            i, j = np.unravel_index(np.argmax(off if off.max() > 1e-12 else diff), want.shape)
            why = _metropolis_rule(got, A) if i != j else ""
            if why:
                pass
            elif i == j:
                why = " (the diagonal makes the row sum to 1)"
            elif not A[i, j]:
                why = f" ({i} and {j} are not neighbors: W must be 0 there)"
            res.failures.append(f"{case}: W[{i}, {j}] = {got[i, j]:.6g}, expected {want[i, j]:.6g}{why}")
    return res.done(verbose)


def _metropolis_rule(got, A):
    """Which usual wrong rule the off-diagonal of ``got`` follows, on the whole graph."""
    A = A.astype(bool)
    d = A.sum(axis=1).astype(np.float64)
    off = got * ~np.eye(len(A), dtype=bool)
    rules = [
        (np.maximum(np.maximum.outer(d, d), 1), " (that is 1/max(d_i, d_j), Metropolis-Hastings: use 1/(1 + max))"),
        (1 + np.minimum.outer(d, d), " (that is 1/(1 + min(d_i, d_j)): use max(d_i, d_j), so no row sums above 1)"),
        (1 + d[:, None] + 0 * d, " (that is 1/(1 + d_i), only one degree: use max(d_i, d_j), so W stays symmetric)"),
        (1 + d[None, :] + 0 * d[:, None], " (that is 1/(1 + d_j), only one degree: use max(d_i, d_j), so W stays symmetric)"),
        (np.full_like(got, 1 + d.max()), " (that is 1/(1 + the largest degree of the whole graph): each edge uses "
                                        "its own two ends, 1/(1 + max(d_i, d_j))"),
    ]
    for denom, why in rules:
        if np.allclose(off, np.where(A, 1.0 / denom, 0.0), atol=1e-12):
            return why
    return ""


# Below the eager limit every send returns at once, so a deadlock there cannot come from the
# order of sends and receives: some rank waits for a message no rank sends it.
WRONG_PEER_DEADLOCK = (
    " every send of this size is eager (it returns at once), so the order of sends and receives "
    "is not the cause: some rank waits to receive from a rank that never sends to it (or sends to "
    "the wrong rank). Receive from topology.in_neighbors(comm.rank) and send to "
    "topology.out_neighbors(comm.rank) (on a directed graph they differ)")
ORDER_DEADLOCK = (
    " the small arrays passed, so the peers are right; above the eager limit (64 KiB) a blocking "
    "send waits for its receive to be posted, and every rank is sending: post the receives first "
    "(irecv), then send (isend), then wait")


def gossip_step(fn, world_sizes=(1, 2, 3, 5, 8), verbose=True):
    """Check ``fn(comm, x, topology, W) -> row comm.rank of W X`` on simulated ranks:
    rings, stars and exponential graphs (directed) for several world sizes, small and
    large (above the 64 KiB eager limit: blocking sends deadlock) arrays; every rank must
    send exactly out-degree messages of x's size, and no collectives."""
    res = CheckResult("gossip_step")
    net = NetworkModel(alpha=1e-6, beta=1e-9)
    for p in world_sizes:
        for topo in (T.ring(p), T.star(p), T.exponential(p)):
            W = topo.mixing_matrix()
            for n in (5, 20000):
                res.cases += 1
                case = f"{topo.name}, n={n}"
                xs = np.random.default_rng(p * 100 + n).standard_normal((p, n))
                want = W @ xs

                def prog(comm, topo=topo, W=W, xs=xs):
                    return fn(comm, xs[comm.rank].copy(), topo, W)

                small = n * 8 <= net.eager_limit
                out = run_case(res, case, lambda prog=prog: launch(prog, p, network=net),
                               deadlock_hint=WRONG_PEER_DEADLOCK if small else ORDER_DEADLOCK)
                if out is NOT_IMPLEMENTED:
                    return res.done(verbose)
                if out is None:
                    continue
                bad = _check_gossip(out, want, topo, n, W, xs)
                if bad:
                    res.failures.append(f"{case}: {bad}")
    return res.done(verbose)


def _why_gossip_wrong(y, r, topo, W, xs):
    """Name the usual mistakes in rank r's mix y: its own term left out, the weights ignored."""
    close = lambda a: np.allclose(y, a, rtol=1e-10, atol=1e-12)  # noqa: E731
    srcs = list(topo.in_neighbors(r))
    if close(W[r] @ xs - W[r, r] * xs[r]):
        return " (your own term is missing: add W[r, r] * x to the neighbors' terms)"
    if close(np.mean(xs[[r] + srcs], axis=0)):
        return (" (that is the plain mean of x and the received arrays: weigh each by its entry "
                "of W, W[r, r] * x + sum of W[r, j] * x_j)")
    if close(xs[r]):
        return " (that is x unchanged: nothing was mixed in)"
    return ""


def _check_gossip(out, want, topo, n, W, xs):
    for r, y in enumerate(out):
        if y is None:
            return f"rank {r} returned None: return the mixed array"
        y = np.asarray(y)
        if y.shape != want[r].shape:
            return f"rank {r} returned shape {y.shape}, expected {want[r].shape}"
        if not np.allclose(y, want[r], rtol=1e-10, atol=1e-12):
            i = int(np.argmax(np.abs(y - want[r])))
            return (f"rank {r}: element {i} is {y[i]:.6g}, row {r} of W X gives {want[r][i]:.6g}"
                    + _why_gossip_wrong(y, r, topo, W, xs))
    trace = out.trace
    lib = [m.label for m in trace.messages if m.label]
    if lib:
        return f"uses a library collective ({lib[0]}): gossip talks to neighbors with send/recv only"
    for r in range(topo.world_size):
        sent = [m for m in trace.messages if m.src == r]
        dsts = sorted(m.dst for m in sent)
        if dsts != sorted(topo.out_neighbors(r)):
            return f"rank {r} sent to {dsts}; its out-neighbors are {list(topo.out_neighbors(r))} (one message each)"
        if any(m.nbytes != n * 8 for m in sent):
            return f"rank {r} sent messages of {[m.nbytes for m in sent]} bytes; send x itself ({n * 8} bytes)"
    return None


register("metropolis_weights", METROPOLIS_HINT, metropolis_weights_solution)
register("gossip_step", GOSSIP_HINT, gossip_step_solution)
