"""Issue 8: the checkers of gossip_step, metropolis_weights, topk_error_feedback, fedavg and
pairwise_mask accept correct answers written otherwise than the solution, and reject
plausible learner mistakes with a verdict that names the mistake."""
import re

import numpy as np
import pytest

from mlscale.check import compress as cc
from mlscale.check import decentralized as cd
from mlscale.check import federated as cf


def _prg(s, n):
    from mlscale.federated.secure import prg
    return prg(s, n)


# ---- gossip_step ------------------------------------------------------------------------
GOSSIP_SIZES = (1, 3, 5)   # 5: the exponential graph is directed (in != out neighbours)


def gossip_recv_posted_then_blocking_send(comm, x, topology, W):
    r = comm.rank
    reqs = [comm.irecv(j) for j in topology.in_neighbors(r)]
    for k in topology.out_neighbors(r):
        comm.send(x, k)                    # fine: every receive is already posted
    got = [q.wait() for q in reqs]
    return W[r, r] * x + sum(W[r, j] * xj for j, xj in zip(topology.in_neighbors(r), got))


def gossip_isend_then_blocking_recv(comm, x, topology, W):
    r = comm.rank
    srcs = list(topology.in_neighbors(r))
    sends = [comm.isend(x, k) for k in topology.out_neighbors(r)]
    got = np.stack([x] + [comm.recv(j) for j in srcs])
    for s in sends:
        s.wait()
    return W[r, [r] + srcs] @ got          # one matrix-vector product


def gossip_blocking_send_then_recv(comm, x, topology, W):
    r = comm.rank
    for k in topology.out_neighbors(r):
        comm.send(x, k)
    got = [comm.recv(j) for j in topology.in_neighbors(r)]
    return W[r, r] * x + sum(W[r, j] * xj for j, xj in zip(topology.in_neighbors(r), got))


def gossip_recv_from_out_neighbors(comm, x, topology, W):
    r = comm.rank
    srcs = topology.out_neighbors(r)       # wrong on a directed graph
    reqs = [comm.irecv(j) for j in srcs]
    sends = [comm.isend(x, k) for k in topology.out_neighbors(r)]
    got = [q.wait() for q in reqs]
    for s in sends:
        s.wait()
    return W[r, r] * x + sum(W[r, j] * xj for j, xj in zip(srcs, got))


def gossip_forgets_own_term(comm, x, topology, W):
    r = comm.rank
    srcs = topology.in_neighbors(r)
    reqs = [comm.irecv(j) for j in srcs]
    sends = [comm.isend(x, k) for k in topology.out_neighbors(r)]
    got = [q.wait() for q in reqs]
    for s in sends:
        s.wait()
    return sum((W[r, j] * xj for j, xj in zip(srcs, got)), np.zeros_like(x))


def gossip_plain_mean(comm, x, topology, W):
    r = comm.rank
    srcs = topology.in_neighbors(r)
    reqs = [comm.irecv(j) for j in srcs]
    sends = [comm.isend(x, k) for k in topology.out_neighbors(r)]
    got = [q.wait() for q in reqs]
    for s in sends:
        s.wait()
    return np.mean([x] + got, axis=0)      # ignores W


def gossip_all_gather(comm, x, topology, W):
    xs = comm.all_gather(x)
    return W[comm.rank] @ np.reshape(xs, (comm.world_size, -1))


@pytest.mark.parametrize("fn", [gossip_recv_posted_then_blocking_send, gossip_isend_then_blocking_recv,
                                cd.gossip_step_solution])
def test_gossip_step_accepts_correct_variants(fn):
    res = cd.gossip_step(fn, world_sizes=GOSSIP_SIZES, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (gossip_blocking_send_then_recv, r"eager limit.*post the receives first"),
    (gossip_recv_from_out_neighbors, r"in_neighbors\(comm.rank\)"),
    (gossip_forgets_own_term, r"W\[r, r\] \* x"),
    (gossip_plain_mean, r"plain mean.*weigh"),
    (gossip_all_gather, r"library collective.*neighbors"),
])
def test_gossip_step_names_the_mistake(fn, words):
    res = cd.gossip_step(fn, world_sizes=GOSSIP_SIZES, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary(), re.S), res.summary()


# ---- metropolis_weights -----------------------------------------------------------------
def metro_loops(adjacency):
    A = np.asarray(adjacency)
    p = len(A)
    d = [int(sum(A[i])) for i in range(p)]
    W = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            if i != j and A[i][j]:
                W[i, j] = 1 / (1 + max(d[i], d[j]))
        W[i, i] = 1 - W[i].sum()
    return W


def metro_float_diag(adjacency):
    A = np.asarray(adjacency, dtype=float)
    d = A.sum(1)
    W = A / (1 + np.maximum(d[:, None], d[None, :]))
    return W + np.diag(1 - W.sum(1))


def metro_mh(adjacency):
    A = np.asarray(adjacency, dtype=float)
    d = A.sum(1)
    W = A / np.maximum(np.maximum.outer(d, d), 1)
    return W + np.diag(1 - W.sum(1))


def metro_no_diag(adjacency):
    A = np.asarray(adjacency, dtype=float)
    d = A.sum(1)
    return A / (1 + np.maximum.outer(d, d))


def metro_own_degree(adjacency):
    A = np.asarray(adjacency, dtype=float)
    d = A.sum(1)
    W = A / (1 + d[:, None])
    return W + np.diag(1 - W.sum(1))


def metro_min(adjacency):
    A = np.asarray(adjacency, dtype=float)
    d = A.sum(1)
    W = A / (1 + np.minimum.outer(d, d))
    return W + np.diag(1 - W.sum(1))


def metro_global_max(adjacency):
    A = np.asarray(adjacency, dtype=float)
    W = A / (1 + A.sum(1).max())
    return W + np.diag(1 - W.sum(1))


@pytest.mark.parametrize("fn", [metro_loops, metro_float_diag])
def test_metropolis_accepts_correct_variants(fn):
    res = cd.metropolis_weights(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (metro_mh, r"1/max\(d_i, d_j\).*use 1/\(1 \+ max\)"),
    (metro_no_diag, r"diagonal makes the row sum to 1"),
    (metro_own_degree, r"only one degree.*max\(d_i, d_j\)"),
    (metro_min, r"min\(d_i, d_j\).*max"),
    (metro_global_max, r"largest degree of the whole graph.*max\(d_i, d_j\)"),
])
def test_metropolis_names_the_mistake(fn, words):
    res = cd.metropolis_weights(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary(), re.S), res.summary()
