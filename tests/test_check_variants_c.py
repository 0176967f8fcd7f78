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


def gossip_returns_x(comm, x, topology, W):
    r = comm.rank
    reqs = [comm.irecv(j) for j in topology.in_neighbors(r)]
    sends = [comm.isend(x, k) for k in topology.out_neighbors(r)]
    for q in reqs + sends:
        q.wait()                           # received, but never mixed in
    return x


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
    (gossip_returns_x, r"x unchanged: nothing was mixed in"),
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


# ---- topk_error_feedback ----------------------------------------------------------------
def topk_argpartition(grad, residual, k):
    residual += grad                                   # in place from the start
    idx = np.argpartition(np.abs(residual), len(residual) - k)[-k:]
    values = residual[idx].copy()
    residual[idx] = 0
    return idx, values


def topk_sorted_reversed(grad, residual, k):
    c = grad + residual
    idx = np.argsort(np.abs(c))[::-1][:k]
    residual[:] = c
    residual[idx] = 0.0
    return idx, c[idx]


def topk_rebinds_residual(grad, residual, k):
    c = grad + residual
    idx = np.argsort(-np.abs(c))[:k]
    values = c[idx]
    c[idx] = 0
    residual = c                                       # noqa: F841  only rebinds the name
    return idx, values


def topk_selects_on_grad(grad, residual, k):
    c = grad + residual
    idx = np.argsort(-np.abs(grad))[:k]
    values = c[idx]
    c[idx] = 0
    residual[...] = c
    return idx, values


def topk_sends_grad_values(grad, residual, k):
    c = grad + residual
    idx = np.argsort(-np.abs(c))[:k]
    values = grad[idx]
    c[idx] = 0
    residual[...] = c
    return idx, values


def topk_no_abs(grad, residual, k):
    c = grad + residual
    idx = np.argsort(-c)[:k]                           # largest values, not magnitudes
    values = c[idx]
    c[idx] = 0
    residual[...] = c
    return idx, values


def topk_keeps_sent_in_residual(grad, residual, k):
    c = grad + residual
    idx = np.argsort(-np.abs(c))[:k]
    residual[...] = c                                  # forgot to zero what was sent
    return idx, c[idx]


@pytest.mark.parametrize("fn", [topk_argpartition, topk_sorted_reversed])
def test_topk_accepts_correct_variants(fn):
    res = cc.topk_error_feedback(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (topk_rebinds_residual, r"residual did not change.*in place"),
    (topk_selects_on_grad, r"selected on \|grad\|.*\|grad \+ residual\|"),
    (topk_sends_grad_values, r"right indices, wrong values.*\(grad \+ residual\)\[indices\]"),
    (topk_no_abs, r"largest values.*magnitude.*np.abs"),
    (topk_keeps_sent_in_residual, r"sent entries.*still in the residual.*set them to 0"),
])
def test_topk_names_the_mistake(fn, words):
    res = cc.topk_error_feedback(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary(), re.S), res.summary()


# ---- fedavg -----------------------------------------------------------------------------
def fedavg_np_average(results):
    weights = [n for _, n in results]
    return [np.average(np.stack(ts), axis=0, weights=weights).astype(ts[0].dtype)
            for ts in zip(*(arrays for arrays, _ in results))]


def fedavg_sum_then_divide(results):
    total = sum(n for _, n in results)
    out = []
    for j in range(len(results[0][0])):
        acc = sum(n * arrays[j].astype(np.float64) for arrays, n in results)
        out.append((acc / total).astype(results[0][0][j].dtype))
    return out


def fedavg_plain_mean(results):
    return [np.mean(ts, axis=0) for ts in zip(*(a for a, _ in results))]


def fedavg_no_divide(results):
    return [sum(n * a for a, n in zip(ts, (n for _, n in results)))
            for ts in zip(*(a for a, _ in results))]


def fedavg_divide_by_clients(results):
    return [sum(n * a for a, n in zip(ts, (n for _, n in results))) / len(results)
            for ts in zip(*(a for a, _ in results))]


def fedavg_accumulates_into_client_0(results):
    total = sum(n for _, n in results)
    out = results[0][0]                                # the first client's own arrays
    for acc in out:
        acc *= results[0][1] / total
    for arrays, n in results[1:]:
        for acc, a in zip(out, arrays):
            acc += (n / total) * a
    return out


@pytest.mark.parametrize("fn", [fedavg_np_average, fedavg_sum_then_divide])
def test_fedavg_accepts_correct_variants(fn):
    res = cf.fedavg(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (fedavg_plain_mean, r"plain mean over clients.*n_k / sum\(n\)"),
    (fedavg_no_divide, r"sum_k n_k x_k: divide by the total number of examples"),
    (fedavg_divide_by_clients, r"divided by the number of clients; divide by sum_k n_k"),
    (fedavg_accumulates_into_client_0, r"changed the clients' arrays in place"),
])
def test_fedavg_names_the_mistake(fn, words):
    res = cf.fedavg(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary(), re.S), res.summary()


# ---- pairwise_mask ----------------------------------------------------------------------
def mask_sum_first(x_enc, u, seeds):
    m = np.zeros_like(x_enc)
    for v in sorted(seeds, reverse=True):
        r = _prg(seeds[v], x_enc.size)
        m = m + r if v > u else m - r
    return x_enc + m


def mask_negate_in_place(x_enc, u, seeds):
    for v, s in seeds.items():
        r = _prg(s, len(x_enc))
        np.add(x_enc, r if v > u else -r, out=x_enc)   # -r wraps mod 2^64 too
    return x_enc


def mask_in_floats(x_enc, u, seeds):
    y = x_enc.astype(np.float64)
    for v, s in seeds.items():
        r = _prg(s, x_enc.size).astype(np.float64)
        y = y + r if v > u else y - r
    return y


def mask_only_adds_for_larger(x_enc, u, seeds):
    y = x_enc.copy()
    for v, s in seeds.items():
        if v > u:
            y += _prg(s, x_enc.size)                  # forgot the v < u terms
    return y


def mask_seeded_by_peer_id(x_enc, u, seeds):
    y = x_enc.copy()
    for v, s in seeds.items():
        r = _prg(v, x_enc.size)                        # the peer's id, not the shared seed
        y = y + r if v > u else y - r
    return y


def mask_flips_for_odd_clients(x_enc, u, seeds):
    y = x_enc.copy()
    for v, s in seeds.items():
        r = _prg(s, x_enc.size)
        y = y + r if (v > u) != (u % 2 == 1) else y - r
    return y


@pytest.mark.parametrize("fn", [mask_sum_first, mask_negate_in_place])
def test_pairwise_mask_accepts_correct_variants(fn):
    res = cf.pairwise_mask(fn, verbose=False)
    assert res.passed, res.summary()


@pytest.mark.parametrize("fn, words", [
    (mask_in_floats, r"uint64.*stay in integers mod 2\^64"),
    (mask_only_adds_for_larger, r"never subtracted it for v < u: client \d+ is left unmasked"),
    (mask_seeded_by_peer_id, r"must come from the seed client \d+ shares with peer v \(seeds\[v\]\)"),
    (mask_flips_for_odd_clients, r"signs the wrong way round"),
])
def test_pairwise_mask_names_the_mistake(fn, words):
    res = cf.pairwise_mask(fn, verbose=False)
    assert not res.passed
    assert re.search(words, res.summary(), re.S), res.summary()
