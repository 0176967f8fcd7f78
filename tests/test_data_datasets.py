"""Synthetic blobs and spirals, scikit-learn's digits, train/test splits."""
import numpy as np
import pytest

from mlscale.data import Split, blobs, load_digits, spirals, train_test_split


@pytest.mark.parametrize("make", [lambda s: blobs(301, num_classes=4, dim=5, seed=s),
                                  lambda s: spirals(301, num_classes=4, seed=s)], ids=["blobs", "spirals"])
def test_synthetic_shapes_dtypes_balance_and_determinism(make):
    X, y = make(0)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert len(X) == len(y) == 301 and X.ndim == 2
    counts = np.bincount(y)
    assert len(counts) == 4 and counts.max() - counts.min() <= 1     # balanced
    assert not np.all(np.diff(y) >= 0)                               # shuffled, not sorted
    X2, y2 = make(0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make(1)
    assert not np.array_equal(X, X3)


def test_blobs_are_clustered_by_class():
    X, y = blobs(600, num_classes=3, dim=2, seed=0, std=0.5, spread=5.0)
    centers = np.stack([X[y == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((X[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y).mean() > 0.95


def test_spirals_are_not_linearly_separable_but_bounded():
    X, y = spirals(900, num_classes=3, seed=0)
    assert X.shape == (900, 2) and np.abs(X).max() <= 1.0 + 1e-6
    # a nearest-class-mean classifier (linear boundaries) does poorly on spirals
    centers = np.stack([X[y == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((X[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y).mean() < 0.7


def test_train_test_split_is_a_deterministic_partition():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20, dtype=np.int64)
    s = train_test_split(X, y, test_fraction=0.25, seed=3)
    assert isinstance(s, Split) and len(s.y_test) == 5 and len(s.y_train) == 15
    assert sorted(np.concatenate([s.y_train, s.y_test]).tolist()) == list(range(20))
    np.testing.assert_array_equal(s.X_train[:, 0], 2 * s.y_train)       # rows stay with their labels
    np.testing.assert_array_equal(s.y_test, train_test_split(X, y, 0.25, seed=3).y_test)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        train_test_split(X, y, test_fraction=1.0)
    with pytest.raises(ValueError, match="20 rows but y has 3"):
        train_test_split(X, y[:3])


def test_load_digits_real_data():
    pytest.importorskip("sklearn")
    X_train, y_train, X_test, y_test = split = load_digits(test_fraction=0.25, seed=0)
    assert X_train.shape == (1348, 64) and X_test.shape == (449, 64)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= X_train.min() and X_train.max() == 1.0
    assert split.num_classes == 10 and set(np.unique(y_test)) == set(range(10))
    np.testing.assert_array_equal(load_digits(seed=0).y_test, y_test)
    assert not np.array_equal(load_digits(seed=1).y_test, y_test)


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


@pytest.mark.parametrize("bad", [lambda: blobs(0), lambda: spirals(10, num_classes=0), lambda: blobs(10, dim=2.5)])
def test_bad_sizes_raise(bad):
    with pytest.raises(ValueError, match="positive integer"):
        bad()
