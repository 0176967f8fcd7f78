"""Which clients train in a round, and which data each client holds.

``sample_clients``: FedAvg's client sampling (McMahan et al. 2017, Algorithm 1): each
round the server picks m = max(floor(C K), 1) of the K clients uniformly WITHOUT
replacement; seeded by (seed, round), so every engine and run picks the same ones.

``partition``: one name for the splits of ``mlscale.data.partition``: "iid",
"label_shards" (McMahan's pathological non-IID: sort by label, 2 shards per client) and
"dirichlet" (label skew with concentration alpha).
"""
from __future__ import annotations

import numpy as np

PARTITIONS = ("iid", "label_shards", "dirichlet")


def check_fraction(fraction):
    if isinstance(fraction, bool) or not np.isscalar(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction C={fraction!r} of clients per round must be in (0, 1] "
                         "(McMahan et al.: 0.1; 1.0 = every client every round)")
    return float(fraction)


def clients_per_round(num_clients, fraction):
    """m = max(floor(C K), 1), as in FedAvg's Algorithm 1 (a small epsilon guards 0.1 * 30 = 2.999...)."""
    check_fraction(fraction)
    return max(int(np.floor(fraction * num_clients + 1e-9)), 1)


def sample_clients(num_clients, fraction, round, seed=0):
    """Sorted 0-based ids of the m clients that train in ``round`` (no replacement)."""
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"sample_clients: num_clients must be a positive integer, got {num_clients!r}")
    m = clients_per_round(int(num_clients), fraction)
    rng = np.random.default_rng([int(seed), int(round), 0x5A3])
    return np.sort(rng.choice(int(num_clients), size=m, replace=False))


def partition(kind, labels, num_clients, seed=0, **kwargs):
    """Index arrays, one per client: ``kind`` in PARTITIONS; kwargs go to the partitioner
    (``shards_per_client=2`` for label_shards, ``alpha=`` for dirichlet)."""
    from .. import data

    if kind not in PARTITIONS:
        raise ValueError(f"partition: unknown kind {kind!r}; use one of {PARTITIONS}")
    n = len(labels)
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"partition: num_clients must be a positive integer, got {num_clients!r}")
    if num_clients > n:
        raise ValueError(f"partition: {num_clients} clients but only {n} examples: every client needs "
                         f"data; use num_clients <= {n}")
    if kind == "iid":
        return data.iid(n, num_clients, seed=seed, **kwargs)
    if kind == "label_shards":
        return data.label_shards(labels, num_clients, seed=seed, **kwargs)
    if "alpha" not in kwargs:
        raise ValueError("partition('dirichlet', ...) needs alpha= (0.1: strong skew, 100: nearly IID)")
    return data.dirichlet(labels, num_clients, seed=seed, **kwargs)
