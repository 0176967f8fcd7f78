"""The alpha-beta-gamma cost model of each collective algorithm.

p ranks, n bytes per rank's vector, alpha seconds per message, beta seconds per byte,
gamma seconds per byte reduced (Hockney; Thakur, Rabenseifner and Gropp 2005;
Patarasuk and Yuan 2009):

====================  =========================================================
ring                  2(p-1) alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma
recursive_doubling    lg p alpha + n lg p beta + n lg p gamma
rabenseifner          2 lg p alpha + 2((p-1)/p) n beta + ((p-1)/p) n gamma
tree                  2 ceil(lg p)(alpha + n beta) + ceil(lg p) n gamma
naive                 2(p-1)(alpha + n beta) + (p-1) n gamma
====================  =========================================================

World sizes that are not powers of two: recursive doubling and Rabenseifner first
fold the extra ranks in (one message of n and a reduction) and hand them the result at
the end (one more message of n), MPICH's scheme, and run the formula on pof2 ranks.

On the ``sim`` engine with ``NetworkModel(alpha, beta, gamma)`` the virtual time of
each algorithm equals these functions (tested), for lengths divisible by p.
"""
from __future__ import annotations

import math

import numpy as np


def _lg(p):
    return math.log2(p)


def _pof2(p):
    return 1 << (p.bit_length() - 1)


def _fold_extra(p, n, alpha, beta, gamma):
    return 0.0 if p == _pof2(p) else 2 * (alpha + n * beta) + n * gamma


def all_reduce(algorithm, p, n, alpha, beta, gamma=0.0):
    """Seconds for an all-reduce of n bytes on p ranks."""
    if p == 1:
        return 0.0
    if algorithm == "ring":
        return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * gamma
    if algorithm == "naive":
        return 2 * (p - 1) * (alpha + n * beta) + (p - 1) * n * gamma
    if algorithm == "tree":
        c = math.ceil(_lg(p))
        return 2 * c * (alpha + n * beta) + c * n * gamma
    q = _pof2(p)
    extra = _fold_extra(p, n, alpha, beta, gamma)
    if algorithm == "recursive_doubling":
        return _lg(q) * (alpha + n * beta + n * gamma) + extra
    if algorithm == "rabenseifner":
        return 2 * _lg(q) * alpha + 2 * (q - 1) / q * n * beta + (q - 1) / q * n * gamma + extra
    raise ValueError(f"no cost model for all_reduce algorithm {algorithm!r}")


def reduce_scatter(algorithm, p, n, alpha, beta, gamma=0.0):
    """Seconds for a reduce-scatter of an n-byte vector (each rank keeps n/p)."""
    if p == 1:
        return 0.0
    if algorithm == "ring":
        return (p - 1) * (alpha + n / p * beta) + (p - 1) / p * n * gamma
    if algorithm == "recursive_halving" and p == _pof2(p):
        return _lg(p) * alpha + (p - 1) / p * n * (beta + gamma)
    raise ValueError(f"no cost model for reduce_scatter algorithm {algorithm!r} on {p} ranks")


def all_gather(algorithm, p, n, alpha, beta):
    """Seconds for an all-gather whose result is n bytes (each rank brings n/p)."""
    if p == 1:
        return 0.0
    if algorithm == "ring":
        return (p - 1) * (alpha + n / p * beta)
    if algorithm == "recursive_doubling" and p == _pof2(p):
        return _lg(p) * alpha + (p - 1) / p * n * beta
    raise ValueError(f"no cost model for all_gather algorithm {algorithm!r} on {p} ranks")


def broadcast(algorithm, p, n, alpha, beta):
    """Seconds for a broadcast of n bytes."""
    if p == 1:
        return 0.0
    if algorithm == "tree":
        return math.ceil(_lg(p)) * (alpha + n * beta)
    if algorithm == "linear":
        return (p - 1) * (alpha + n * beta)
    raise ValueError(f"no cost model for broadcast algorithm {algorithm!r}")


def bytes_sent(algorithm, p, n, rank=None):
    """Bytes one rank sends in an all-reduce of n bytes (the busiest rank if rank is None).
    Ring: exactly 2(p-1)/p n for every rank (Gibiansky 2017), whatever p is."""
    if p == 1:
        return 0
    if algorithm == "ring":
        return 2 * (p - 1) / p * n
    if algorithm == "naive":
        return (p - 1) * n if rank in (None, 0) else n
    if algorithm == "recursive_doubling" and p == _pof2(p):
        return _lg(p) * n
    if algorithm == "rabenseifner" and p == _pof2(p):
        return 2 * (p - 1) / p * n
    raise ValueError(f"no byte count for all_reduce algorithm {algorithm!r} on {p} ranks")


ALL_REDUCE = ("naive", "tree", "ring", "recursive_doubling", "rabenseifner")


def table(p, n, alpha, beta, gamma=0.0):
    """{algorithm: predicted seconds} for an all-reduce of n bytes on p ranks."""
    return {a: all_reduce(a, p, n, alpha, beta, gamma) for a in ALL_REDUCE}


def best(p, n, alpha, beta, gamma=0.0):
    """The algorithm the model says is fastest."""
    t = table(p, n, alpha, beta, gamma)
    return min(t, key=t.get)


# nccl-tests' definitions (doc/PERFORMANCE.md)
BUSBW_FACTOR = {
    "all_reduce": lambda p: 2 * (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "all_gather": lambda p: (p - 1) / p,
    "broadcast": lambda p: 1.0,
    "reduce": lambda p: 1.0,
}


def algbw(nbytes, seconds):
    """Algorithm bandwidth S / t, bytes per second."""
    return nbytes / seconds


def busbw(collective, p, nbytes, seconds):
    """Bus bandwidth: algbw times the collective's factor; a perfect ring reaches the link speed."""
    return algbw(nbytes, seconds) * BUSBW_FACTOR[collective](p)


def fit_alpha_beta(nbytes, seconds):
    """Least-squares fit of t = alpha + n beta to measured (n, t) pairs (a ping-pong's
    one-way times). Returns (alpha, beta)."""
    n = np.asarray(nbytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    A = np.stack([np.ones_like(n), n], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(A, t, rcond=None)
    return float(max(alpha, 0.0)), float(max(beta, 0.0))


# ---------------------------------------------------------------- all-to-all (issue 11)
def _bruck_blocks(p):
    """m_k for each round k = 1, 2, 4, ... < p of Bruck's all-to-all: #{i < p: i & k}."""
    out, k = [], 1
    while k < p:
        out.append(sum(1 for i in range(p) if i & k))
        k <<= 1
    return out


def all_to_all(algorithm, p, n, alpha, beta):
    """Seconds for an all-to-all in which every rank sends n bytes in all (p pieces of
    n/p, its own included), on the one-port model (Thakur, Rabenseifner, Gropp 2005):
    pairwise (p-1)(alpha + (n/p) beta); Bruck sum over its ceil(lg p) rounds of
    (alpha + m_k (n/p) beta), m_k = #{i < p: i & k}, which is lg p alpha + (n/2) lg p
    beta for p a power of two. Both equal the sim clock (tested).

    "linear" (every message posted at once) gets the pairwise time as a lower bound:
    it is reached only where the network interleaves the messages so that no port
    waits. The sim engine books a port first come, first served, in the order the
    ranks run, so on sim linear takes 3(p-1)(alpha + (n/p) beta) for p >= 3 (measured,
    tests/test_alltoall.py): what a network without flow scheduling pays for posting
    everything at once."""
    if p == 1:
        return 0.0
    b = n / p
    if algorithm in ("pairwise", "linear"):
        return (p - 1) * (alpha + b * beta)
    if algorithm == "bruck":
        return sum(alpha + m * b * beta for m in _bruck_blocks(p))
    raise ValueError(f"no cost model for all_to_all algorithm {algorithm!r}")


def all_to_all_bytes_sent(algorithm, p, n):
    """Bytes one rank puts on the wire in an all-to-all of n bytes per rank: pairwise
    (p-1)/p n (each byte once, the own piece stays); Bruck sum m_k n/p (bytes hop up
    to lg p times: n/2 lg p for p a power of two)."""
    if p == 1:
        return 0
    if algorithm in ("pairwise", "linear"):
        return (p - 1) / p * n
    if algorithm == "bruck":
        return sum(_bruck_blocks(p)) * n / p
    raise ValueError(f"no byte count for all_to_all algorithm {algorithm!r}")


BUSBW_FACTOR["all_to_all"] = lambda p: (p - 1) / p  # nccl-tests' alltoall
