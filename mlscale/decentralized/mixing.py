"""Mixing matrices and how fast they average (Xiao and Boyd 2004).

One gossip round replaces every rank's x_i by ``sum_j W_ij x_j``: ``x(t+1) = W x(t)``.
It converges to the average for every start iff ``1^T W = 1^T`` (the sum is kept),
``W 1 = 1`` (a consensus stays put) and ``rho = rho(W - 11^T/p) < 1``; the distance to
the average then shrinks by about rho per round, so ``log(1/eps) / log(1/rho)`` rounds
reach a relative error eps.

Weight rules, on the degrees d_i of an undirected graph (edges i ~ j; W_ii takes the rest):

- ``metropolis_hastings``: W_ij = 1/max(d_i, d_j). On an even ring (bipartite) the
  eigenvalue -1 survives: rho = 1 and it never converges.
- ``metropolis``: W_ij = 1/(1 + max(d_i, d_j)) (Xiao and Boyd's "max-degree + 1" safe
  choice): always rho < 1 on a connected graph. Ring: 1/3 each; 2-D torus: 1/5 each.
- ``uniform``: W_ij = 1/(d + 1) on a regular graph (every in- and out-degree d),
  directed ones included (the exponential graphs of Ying et al. 2021).
- ``lazy_<rule>``: (I + W)/2: every eigenvalue moves into [0, 1], the fix for -1.
- ``push_sum``: column-stochastic W_ij = 1/(d_out_j + 1) for any directed graph: keeps
  the sum but not the average (Kempe et al. 2003; see push_sum.py).
"""
from __future__ import annotations

import math

import numpy as np

RULES = ("metropolis_hastings", "metropolis", "uniform", "push_sum")


def _undirected_degrees(topology, t, rule):
    if topology.directed:
        raise ValueError(
            f"{rule} weights need an undirected topology; {topology.name} is directed: "
            "use rule='uniform' (regular graphs) or push-sum"
        )
    return np.array(topology.degrees(t), dtype=np.float64)


def _fill_diagonal(W):
    np.fill_diagonal(W, 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def metropolis_hastings(topology, t=0):
    """W_ij = 1/max(d_i, d_j) on every edge, W_ii = 1 - sum_j W_ij."""
    d = _undirected_degrees(topology, t, "metropolis_hastings")
    A = topology.adjacency(t)
    W = np.where(A, 1.0 / np.maximum.outer(np.maximum(d, 1), np.maximum(d, 1)), 0.0)
    return _fill_diagonal(W)


def metropolis(topology, t=0):
    """W_ij = 1/(1 + max(d_i, d_j)) on every edge, W_ii = 1 - sum_j W_ij."""
    d = _undirected_degrees(topology, t, "metropolis")
    A = topology.adjacency(t)
    W = np.where(A, 1.0 / (1.0 + np.maximum.outer(d, d)), 0.0)
    return _fill_diagonal(W)


def uniform(topology, t=0):
    """W_ij = 1/(d + 1) for j = i and every in-neighbor j; needs a regular graph."""
    A = topology.adjacency(t)
    din, dout = A.sum(axis=1), A.sum(axis=0)
    if len(set(din.tolist()) | set(dout.tolist())) > 1:
        raise ValueError(
            f"uniform weights need a regular graph (all in- and out-degrees equal); {topology.name} "
            f"has in-degrees {sorted(set(din.tolist()))} and out-degrees {sorted(set(dout.tolist()))}: "
            "use 'metropolis' (undirected) or push-sum (directed)"
        )
    d = int(din[0]) if len(din) else 0
    return (A + np.eye(topology.world_size)) / (d + 1.0)


def push_sum_weights(topology, t=0):
    """Column-stochastic P_ij = 1/(d_out_j + 1): each rank splits what it has equally
    between itself and its out-neighbors (Kempe et al. 2003)."""
    A = topology.adjacency(t).astype(np.float64)
    M = A + np.eye(topology.world_size)
    return M / M.sum(axis=0, keepdims=True)


def lazy(W):
    """(I + W)/2: half of every round is "keep what you have"."""
    W = np.asarray(W, dtype=np.float64)
    return 0.5 * (np.eye(W.shape[0]) + W)


def mixing_matrix(topology, rule="metropolis", t=0):
    """The (p, p) mixing matrix of ``topology`` in round ``t`` by ``rule`` (one of RULES,
    or ``lazy_`` + one of them)."""
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a name, one of {RULES} or 'lazy_' + one, got {type(rule).__name__}")
    if rule.startswith("lazy_"):
        return lazy(mixing_matrix(topology, rule[5:], t))
    fns = {"metropolis_hastings": metropolis_hastings, "metropolis": metropolis,
           "uniform": uniform, "push_sum": push_sum_weights}
    if rule not in fns:
        raise ValueError(f"unknown mixing rule {rule!r}; use one of {RULES} or 'lazy_' + one of them")
    return fns[rule](topology, t)


def validate_mixing_matrix(W, topology=None, t=0, doubly_stochastic=True, tol=1e-9):
    """Check W: square, nonnegative, W 1 = 1 (rows), 1^T W = 1^T (columns, when
    ``doubly_stochastic``), and, given a topology, W_ij > 0 exactly on its edges j -> i
    (off the diagonal). Raises ValueError listing every failure; returns W."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"mixing matrix must be square (p, p), got shape {W.shape}")
    p = W.shape[0]
    bad = []
    if (W < -tol).any():
        i, j = np.argwhere(W < -tol)[0]
        bad.append(f"W[{i}, {j}] = {W[i, j]:.3g} is negative: weights must be >= 0")
    rows = W.sum(axis=1)
    if not np.allclose(rows, 1.0, atol=tol):
        i = int(np.argmax(np.abs(rows - 1)))
        bad.append(f"row {i} sums to {rows[i]:.6g}, not 1 (W 1 = 1 keeps a consensus in place)")
    cols = W.sum(axis=0)
    if doubly_stochastic and not np.allclose(cols, 1.0, atol=tol):
        j = int(np.argmax(np.abs(cols - 1)))
        bad.append(f"column {j} sums to {cols[j]:.6g}, not 1 (1^T W = 1^T keeps the average)")
    if topology is not None:
        if topology.world_size != p:
            bad.append(f"W is {p}x{p} but {topology.name} has {topology.world_size} ranks")
        else:
            A = topology.adjacency(t)
            off = ~np.eye(p, dtype=bool)
            extra = np.argwhere((np.abs(W) > tol) & ~A & off)
            missing = np.argwhere((np.abs(W) <= tol) & A)
            if len(extra):
                i, j = extra[0]
                bad.append(f"W[{i}, {j}] = {W[i, j]:.3g} but rank {j} is not a neighbor of rank {i} "
                           f"in {topology.name}: gossip can only mix neighbors")
            if len(missing):
                i, j = missing[0]
                bad.append(f"W[{i}, {j}] = 0 but {j} -> {i} is an edge of {topology.name}: "
                           "every edge should carry weight")
    if bad:
        raise ValueError("invalid mixing matrix:\n  " + "\n  ".join(bad))
    return W


# ---------------------------------------------------------------- spectral quantities
def consensus_rate(W):
    """rho(W - 11^T/p): the factor by which gossip with W shrinks the distance to the
    average per round (asymptotically; per round in the 2-norm when W is symmetric or
    circulant). For symmetric W it is max(lambda_2, -lambda_p)."""
    W = np.asarray(W, dtype=np.float64)
    p = W.shape[0]
    M = W - np.full((p, p), 1.0 / p)
    if np.allclose(W, W.T):
        ev = np.linalg.eigvalsh(M)
    else:
        ev = np.linalg.eigvals(M)
    return float(np.max(np.abs(ev))) if p > 0 else 0.0


def spectral_gap(W):
    """1 - rho(W - 11^T/p)."""
    return 1.0 - consensus_rate(W)


def rounds_to_eps(W, eps=1e-3):
    """log(1/eps) / log(1/rho): gossip rounds until the error is eps times the start
    (inf when rho >= 1, 0 when one round is exact)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps!r} must be in (0, 1)")
    rho = W if np.isscalar(W) else consensus_rate(W)
    if rho >= 1 - 1e-12:
        return math.inf
    if rho < 1e-12:
        return 0.0
    return math.log(1 / eps) / math.log(1 / rho)


def period_matrix(topology, rule=None, t0=0, rounds=None):
    """W(t0 + rounds - 1) ... W(t0 + 1) W(t0): the mixing of ``rounds`` rounds (default:
    one period of a time-varying topology)."""
    rounds = topology.period if rounds is None else rounds
    P = np.eye(topology.world_size)
    for t in range(t0, t0 + rounds):
        P = topology.mixing_matrix(rule, t) @ P
    return P


def topology_rate(topology, rule=None):
    """rho per round: consensus_rate of W, or of one period's product ^ (1/period)."""
    if not topology.time_varying:
        return consensus_rate(topology.mixing_matrix(rule))
    return consensus_rate(period_matrix(topology, rule)) ** (1.0 / topology.period)


def consensus_errors(topology, x0, rounds, rule=None):
    """Simulate x(t+1) = W(t) x(t) in NumPy (the oracle for the distributed gossip);
    returns ||x(t) - mean|| / ||x(0) - mean|| for t = 0..rounds. ``topology`` may also
    be one mixing matrix. x0: (p,) or (p, n)."""
    x = np.asarray(x0, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    mean = x.mean(axis=0, keepdims=True)
    e0 = np.linalg.norm(x - mean)
    errs = [1.0]
    for t in range(rounds):
        W = topology if isinstance(topology, np.ndarray) else topology.mixing_matrix(rule, t)
        x = W @ x
        errs.append(np.linalg.norm(x - mean) / e0 if e0 > 0 else 0.0)
    return np.array(errs)
