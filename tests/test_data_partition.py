"""Partitioners: disjoint, covering, sized as promised, and skewed as promised."""
import numpy as np
import pytest

from mlscale.data import dirichlet, iid, label_counts, label_shards, label_skew


def labels_10_classes(per_class=60, seed=0):
    y = np.repeat(np.arange(10), per_class)
    return np.random.default_rng(seed).permutation(y)


def assert_partition(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert len(allidx) == n and len(np.unique(allidx)) == n      # disjoint and covering
    assert allidx.min() == 0 and allidx.max() == n - 1
    for p in parts:
        assert np.all(np.diff(p) > 0)                             # sorted


@pytest.mark.parametrize("n, k", [(100, 7), (10, 10), (1, 1), (1000, 3)])
def test_iid_sizes_and_coverage(n, k):
    parts = iid(n, k, seed=0)
    assert len(parts) == k
    assert_partition(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [p.tolist() for p in iid(np.zeros(n), k, seed=0)] == [p.tolist() for p in parts]   # labels or n
    if n > k > 1:
        assert [p.tolist() for p in iid(n, k, seed=1)] != [p.tolist() for p in parts]


def test_label_shards_mcmahan_two_labels_per_client():
    y = labels_10_classes(per_class=60)                 # 600 examples, 20 clients x 2 shards of 15
    parts = label_shards(y, num_clients=20, shards_per_client=2, seed=0)
    assert_partition(parts, len(y))
    assert all(len(p) == 30 for p in parts)
    labels_seen = [len(np.unique(y[p])) for p in parts]
    assert max(labels_seen) <= 2
    assert sum(s == 1 for s in labels_seen) < 10       # shards dealt at random: most see 2 labels
    assert label_skew(parts, y) > 0.75                 # far from IID
    assert label_skew(iid(y, 20, seed=0), y) < 0.3


def test_label_shards_reproduces_fedavg_mnist_layout():
    y = np.repeat(np.arange(10), 6000)                 # MNIST-sized: 100 clients, 200 shards of 300
    parts = label_shards(y, num_clients=100, shards_per_client=2, seed=0)
    assert all(len(p) == 600 for p in parts)
    assert max(len(np.unique(y[p])) for p in parts) <= 2


def test_label_shards_other_shard_counts_and_determinism():
    y = labels_10_classes(per_class=30)
    parts = label_shards(y, num_clients=5, shards_per_client=6, seed=1)   # 30 shards of 10
    assert_partition(parts, len(y))
    assert max(len(np.unique(y[p])) for p in parts) <= 6
    again = label_shards(y, num_clients=5, shards_per_client=6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_small_alpha_skews_more_than_large_alpha():
    y = labels_10_classes(per_class=100)
    skews = {}
    for alpha in [0.05, 0.5, 100.0]:
        parts = dirichlet(y, num_clients=10, alpha=alpha, seed=0, min_size=10)
        assert_partition(parts, len(y))
        assert min(len(p) for p in parts) >= 10
        skews[alpha] = label_skew(parts, y)
    assert skews[0.05] > skews[0.5] > skews[100.0]
    assert skews[0.05] > 0.5 and skews[100.0] < 0.1
    counts = label_counts(dirichlet(y, 10, alpha=0.05, seed=0), y)
    assert counts.shape == (10, 10) and counts.sum() == len(y)
    assert np.median((counts > 0).sum(axis=1)) <= 4   # with alpha 0.05 a typical client holds few classes


def test_dirichlet_is_deterministic():
    y = labels_10_classes()
    a, b = dirichlet(y, 8, alpha=0.3, seed=5), dirichlet(y, 8, alpha=0.3, seed=5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_label_skew_extremes():
    y = np.array([0, 0, 1, 1])
    assert label_skew([np.array([0, 2]), np.array([1, 3])], y) == 0.0
    assert label_skew([np.array([0, 1]), np.array([2, 3])], y) == 0.5


@pytest.mark.parametrize("bad, match", [
    (lambda: iid(5, 6), "5 examples cannot give each of 6 clients"),
    (lambda: iid(5, 0), "num_clients must be a positive integer"),
    (lambda: label_shards(np.arange(10), 3, shards_per_client=4), r"3 x 4 = 12 non-empty shards"),
    (lambda: label_shards(np.zeros(10), 2), "integers"),
    (lambda: dirichlet(np.arange(10) % 2, 2, alpha=0), "alpha must be > 0"),
    (lambda: dirichlet(np.arange(10) % 2, 2, alpha=1.0, min_size=10), "lower min_size"),
    (lambda: dirichlet(np.arange(10) % 2, 3, alpha=1e-3, min_size=3, max_tries=2), "no draw in 2 tries"),
    (lambda: label_shards(np.array([-1, 0, 1, 1]), 2), ">= 0"),
])
def test_bad_arguments_raise_clear_errors(bad, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        bad()
