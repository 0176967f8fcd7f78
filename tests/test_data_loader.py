"""Shards, deterministic batches, and splitting a global batch over ranks."""
import numpy as np
import pytest

from mlscale.data import batches, num_batches, shard, split_batch
from mlscale.nn import MLP


def data(n=10):
    X = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    return X, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_equal_sized(world_size):
    X, y = data(23)
    got = [shard(X, y, r, world_size) for r in range(world_size)]
    for Xr, yr in got:
        assert len(yr) == 23 // world_size
        np.testing.assert_array_equal(Xr[:, 0], 2 * yr)                   # rows keep their labels
    allidx = np.concatenate([yr for _, yr in got])
    assert len(np.unique(allidx)) == len(allidx) == 23 - 23 % world_size
    uneven = [shard(X, y, r, world_size, even=False)[1] for r in range(world_size)]
    assert sorted(np.concatenate(uneven).tolist()) == list(range(23))     # even=False keeps all
    np.testing.assert_array_equal(uneven[0], np.arange(0, 23, world_size))  # DistributedSampler's stride


def test_batches_cover_an_epoch_deterministically():
    X, y = data(10)
    bs = list(batches(X, y, batch_size=4, seed=1, epoch=0))
    assert [len(yb) for _, yb in bs] == [4, 4, 2] and num_batches(10, 4) == 3
    assert sorted(np.concatenate([yb for _, yb in bs]).tolist()) == list(range(10))
    again = list(batches(X, y, batch_size=4, seed=1, epoch=0))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(bs, again))
    order = lambda **kw: np.concatenate([yb for _, yb in batches(X, y, 4, **kw)]).tolist()  # noqa: E731
    assert order(seed=1, epoch=1) != order(seed=1, epoch=0)                   # new epoch, new order
    assert order(seed=2, epoch=0) != order(seed=1, epoch=0)
    assert order(seed=1, epoch=0, shuffle=False) == list(range(10))
    assert [len(yb) for _, yb in batches(X, y, 4, drop_last=True)] == [4, 4] and num_batches(10, 4, True) == 2
    assert [xb.shape for xb, yb in batches(X, None, 5)] == [(5, 2), (5, 2)]


def test_split_batch_slices_and_errors():
    X, y = data(12)
    parts = [split_batch((X, y), r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert parts[1][1].tolist() == [4, 5, 6, 7]
    np.testing.assert_array_equal(split_batch(X, 2, 4), X[6:9])
    with pytest.raises(ValueError, match="global batch 10 does not split over 3 ranks: use a multiple of 3"):
        split_batch(np.zeros(10), 0, 3)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\), got 3"):
        split_batch(X, 3, 3)
    with pytest.raises(ValueError, match="different lengths"):
        split_batch((X, y[:6]), 0, 2)


def test_split_batch_gradients_average_to_the_full_batch_gradient():
    """Data parallelism's oracle: the mean of the ranks' gradients on equal slices = the full-batch gradient."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 5)), rng.integers(0, 3, 12)
    model = MLP([5, 7, 3], seed=0, dtype=np.float64)
    model.loss_and_grad(X, y)
    full = model.grads.copy()
    world_size = 4
    local = []
    for rank in range(world_size):
        Xr, yr = split_batch((X, y), rank, world_size)
        model.loss_and_grad(Xr, yr)
        local.append(model.grads.copy())
    np.testing.assert_allclose(np.mean(local, axis=0), full, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad, match", [
    (lambda: shard(*data(3), rank=0, world_size=4), "3 examples cannot give rank 0 of 4 any data"),
    (lambda: shard(*data(3), rank=-1, world_size=2), r"rank must be in \[0, 2\)"),
    (lambda: shard(np.zeros(3), np.zeros(4), 0, 1), "X has 3 rows but y has 4"),
    (lambda: list(batches(*data(3), batch_size=0)), "batch_size must be a positive integer"),
    (lambda: split_batch(np.zeros(4), 0, 0), "world_size must be a positive integer"),
])
def test_bad_arguments_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
