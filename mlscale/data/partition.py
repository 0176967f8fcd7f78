"""Split a data set over clients: IID, pathological label shards, Dirichlet label skew.

Each partitioner returns a list of ``num_clients`` int64 index arrays (sorted), disjoint
and together covering every example, so client k's data is ``X[parts[k]], y[parts[k]]``.

- ``iid``: a random permutation cut into near-equal parts (sizes differ by at most 1).
- ``label_shards``: McMahan et al. 2017 (FedAvg), "pathological non-IID": sort by label,
  cut into ``num_clients * shards_per_client`` shards, deal ``shards_per_client`` to each
  client (MNIST: 200 shards of 300, 2 per client, so most clients see only 2 digits).
- ``dirichlet``: per class, proportions over clients drawn from Dir(alpha)
  (Hsu, Qi and Brown 2019; Yurochkin et al. 2019). Small alpha: each client holds few
  classes; large alpha: close to IID.

``label_counts`` and ``label_skew`` measure the result.
"""
import numpy as np


def _check_clients(func, num_clients, n):
    if int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"{func}: num_clients must be a positive integer, got {num_clients!r}")
    if n < num_clients:
        raise ValueError(f"{func}: {n} examples cannot give each of {num_clients} clients at least one; "
                         f"use num_clients <= {n}")


def _labels(func, labels):
    y = np.asarray(labels.get() if hasattr(labels, "get") else labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"{func}: labels must be a 1-D array of integers, got shape {y.shape} dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{func}: labels must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def iid(labels_or_n, num_clients, seed=0):
    """A random permutation of range(n) cut into ``num_clients`` near-equal parts."""
    n = int(labels_or_n) if np.isscalar(labels_or_n) else len(labels_or_n)
    _check_clients("iid", num_clients, n)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, num_clients)]


def label_shards(labels, num_clients, shards_per_client=2, seed=0):
    """McMahan et al. 2017's pathological non-IID split: sorted-label shards dealt to clients.

    Examples are sorted by label (ties in random order), cut into ``num_clients *
    shards_per_client`` contiguous shards of near-equal size, and the shards dealt at
    random, ``shards_per_client`` to each client. A client sees at most
    ``shards_per_client`` labels when every shard lies inside one class (as with MNIST's
    300-example shards); a shard that straddles two classes adds one.
    """
    y = _labels("label_shards", labels)
    n = len(y)
    _check_clients("label_shards", num_clients, n)
    if int(shards_per_client) != shards_per_client or shards_per_client < 1:
        raise ValueError(f"label_shards: shards_per_client must be a positive integer, got {shards_per_client!r}")
    num_shards = num_clients * shards_per_client
    if n < num_shards:
        raise ValueError(f"label_shards: {n} examples cannot make {num_clients} x {shards_per_client} = "
                         f"{num_shards} non-empty shards; lower num_clients or shards_per_client")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(y[perm], kind="stable")]  # sorted by label, random within a label
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shards[s] for s in deal[k * shards_per_client:(k + 1) * shards_per_client]]))
            for k in range(num_clients)]


def dirichlet(labels, num_clients, alpha, seed=0, min_size=10, max_tries=1000):
    """Label skew from a Dirichlet prior: class c's examples go to clients in proportions ~ Dir(alpha).

    As in the reference code of Yurochkin et al. 2019 / Wang et al. 2020: a client that
    already holds its fair share ``n / num_clients`` gets no more, and the whole draw is
    repeated until every client has at least ``min_size`` examples (at most ``max_tries``).
    """
    y = _labels("dirichlet", labels)
    n = len(y)
    _check_clients("dirichlet", num_clients, n)
    if not alpha > 0:
        raise ValueError(f"dirichlet: alpha must be > 0 (0.1: strong skew, 100: nearly IID), got {alpha!r}")
    if min_size * num_clients > n:
        raise ValueError(f"dirichlet: min_size={min_size} for {num_clients} clients needs {min_size * num_clients} "
                         f"examples, there are {n}; lower min_size or num_clients")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            p = np.where(sizes < n / num_clients, p, 0.0)  # full clients take no more
            if not np.isfinite(p).all() or p.sum() <= 0:  # underflow with tiny alpha: spread over non-full
                p = (sizes < n / num_clients).astype(np.float64)
            p /= p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise RuntimeError(f"dirichlet: no draw in {max_tries} tries gave every one of {num_clients} clients "
                       f">= {min_size} examples (alpha={alpha}); raise alpha, lower min_size, or raise max_tries")


def label_counts(parts, labels, num_classes=None):
    """(num_clients, num_classes) matrix: how many examples of each class each client holds."""
    y = _labels("label_counts", labels)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    return np.stack([np.bincount(y[np.asarray(p, dtype=np.int64)], minlength=k) for p in parts])


def label_skew(parts, labels):
    """Mean total variation distance between each client's label distribution and the global one.

    0 for identical class proportions (IID in the limit); close to 1 when clients hold
    disjoint classes. A single number to compare partitions (e.g. Dirichlet alphas).
    """
    counts = label_counts(parts, labels).astype(np.float64)  # (num_clients, num_classes)
    sizes = counts.sum(axis=1, keepdims=True)
    if (sizes == 0).any():
        raise ValueError("label_skew: a client holds no examples")
    global_p = counts.sum(axis=0) / counts.sum()
    return float((0.5 * np.abs(counts / sizes - global_p).sum(axis=1)).mean())
