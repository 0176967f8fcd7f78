"""Byzantine-robust aggregation rules on ``list[(arrays, num_examples)]``.

A linear rule (FedAvg, any weighted mean) does not survive ONE Byzantine client: it
sends ``x_bad = (target - sum_{k != bad} w_k x_k) / w_bad`` and the aggregate is
whatever it wants (Blanchard et al. 2017, Lemma 1). The rules here ignore
``num_examples`` (a Byzantine client would simply claim a huge one):

- ``median``: coordinate-wise median (Yin, Chen, Ramchandran, Bartlett 2018);
- ``trimmed_mean``: per coordinate drop the ``b`` largest and ``b`` smallest values,
  average the rest (Yin et al. 2018), tolerates b Byzantine clients;
- ``krum`` / multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017): score each
  client by the sum of squared distances to its n - f - 2 nearest others, keep the
  lowest score (Krum) or average the m lowest (multi-Krum). Needs 2f + 2 < n.

Median and trimmed mean call the kernels of ``mlscale.ops`` per array; Krum's
pairwise distances come from one Gram matrix (``krum_scores``), checked against the
plain double loop (``krum_scores_reference``).
"""
from __future__ import annotations

import numpy as np

from .aggregate import pack, unpack


def median(results, impl="auto"):
    """Coordinate-wise median of the clients' arrays (num_examples ignored)."""
    from ..ops import coordinate_median

    layers, _, single = unpack(results, "median")
    out = [coordinate_median([c[j] for c in layers], impl=impl) for j in range(len(layers[0]))]
    return pack(out, single)


def trimmed_mean(results, trim, impl="auto"):
    """Coordinate-wise trimmed mean: ``trim`` an int b (drop b per side) or a fraction."""
    from ..ops import trimmed_mean as _tm

    layers, _, single = unpack(results, "trimmed_mean")
    out = [_tm([c[j] for c in layers], trim, impl=impl) for j in range(len(layers[0]))]
    return pack(out, single)


def _flat(layers):
    """(n_clients, d) float64 matrix: each client's arrays, concatenated."""
    return np.stack([np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in c])
                     for c in layers])


def _check_f(rule, n, f, m=1):
    if isinstance(f, bool) or int(f) != f or f < 0:
        raise ValueError(f"{rule}: f (the number of Byzantine clients tolerated) must be an "
                         f"integer >= 0, got {f!r}")
    if not 2 * f + 2 < n:
        raise ValueError(f"{rule}: Krum needs 2f + 2 < n (Blanchard et al. 2017); got f={f} with "
                         f"n={n} clients. Use at least {2 * f + 3} clients or f <= {max((n - 3) // 2, 0)}"
                         + (" (n >= 3 is needed for any f)" if n < 3 else ""))
    if isinstance(m, bool) or int(m) != m or not 1 <= m <= n:
        raise ValueError(f"{rule}: m (clients averaged by multi-Krum) must be in [1, {n}], got {m!r}")


def krum_scores_reference(vectors, f):
    """score_i = sum of the n - f - 2 smallest ||x_i - x_j||^2 over j != i (double loop)."""
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    scores = np.empty(n)
    for i in range(n):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        scores[i] = sum(d[: n - f - 2])
    return scores


def krum_scores(vectors, f):
    """Krum's scores from one Gram matrix: ||x_i - x_j||^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j."""
    x = np.asarray(vectors, dtype=np.float64)  # (n, d)
    n = len(x)
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)  # (n, n)
    np.fill_diagonal(d2, np.inf)
    return np.sort(d2, axis=1)[:, : n - f - 2].sum(axis=1)


def krum_select(results, f, m=1):
    """Indices of the m clients Krum keeps (lowest scores first; ties to the lower index)."""
    layers, _, _ = unpack(results, "krum")
    _check_f("krum", len(layers), f, m)
    scores = krum_scores(_flat(layers), f)
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def krum(results, f, m=1):
    """Krum (m = 1: the chosen client's arrays) or multi-Krum (the mean of the m chosen).

    f: the number of Byzantine clients to tolerate, 2f + 2 < n. Blanchard et al. 2017.
    """
    layers, _, single = unpack(results, "krum")
    chosen = krum_select(results, f, m)
    out = [np.mean(np.stack([layers[i][j] for i in chosen]), axis=0).astype(layers[0][j].dtype)
           for j in range(len(layers[0]))]
    return pack(out, single)


def multi_krum(results, f, m):
    """Multi-Krum: average the m clients with the lowest Krum scores."""
    return krum(results, f, m)
