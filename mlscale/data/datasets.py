"""Small data sets that need no download: synthetic blobs and spirals, and scikit-learn's digits.

Every function is deterministic in its ``seed`` and returns ``X`` as float32 and ``y``
as int64, the dtypes ``mlscale.nn`` expects. The splits come back as a ``Split``
named tuple, so ``X_train, y_train, X_test, y_test = load_digits()`` works.
"""
from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """A train/test split: ``X_*`` float32 (n, features), ``y_*`` int64 (n,)."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self):
        return int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))) + 1


def _check_positive(func, **values):
    for name, v in values.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{func}: {name} must be a positive integer, got {v!r}")


def _balanced_labels(n, num_classes, rng):
    """n labels as equal as can be (counts differ by at most 1), in random order."""
    y = np.arange(n, dtype=np.int64) % num_classes
    return y[rng.permutation(n)]


def blobs(n=600, num_classes=3, dim=2, seed=0, std=1.0, spread=4.0):
    """Gaussian clusters: class c is N(center_c, std^2 I), centers drawn N(0, spread^2 I).

    Returns ``(X, y)``: X float32 (n, dim), y int64 (n,), classes balanced and shuffled.
    """
    _check_positive("blobs", n=n, num_classes=num_classes, dim=dim)
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(num_classes, dim))  # (num_classes, dim)
    y = _balanced_labels(n, num_classes, rng)
    X = centers[y] + rng.normal(0.0, std, size=(n, dim))  # (n, dim)
    return X.astype(np.float32), y


def spirals(n=600, num_classes=3, seed=0, noise=0.2, turns=1.0):
    """Interleaved 2-D spirals, one arm per class (the CS231n classic): not linearly separable.

    Arm c: radius r in [0, 1], angle ``4 turns r + 2 pi c / num_classes`` plus N(0, noise^2).
    Returns ``(X, y)``: X float32 (n, 2), y int64 (n,), classes balanced and shuffled.
    """
    _check_positive("spirals", n=n, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    y = _balanced_labels(n, num_classes, rng)
    r = rng.uniform(0.0, 1.0, size=n)
    theta = 4.0 * turns * r + 2.0 * np.pi * y / num_classes + rng.normal(0.0, noise, size=n)
    X = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)  # (n, 2)
    return X.astype(np.float32), y


def train_test_split(X, y, test_fraction=0.25, seed=0):
    """A deterministic random split of (X, y) into a ``Split``; ``test_fraction`` in (0, 1)."""
    if len(X) != len(y):
        raise ValueError(f"train_test_split: X has {len(X)} rows but y has {len(y)} labels")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1), got {test_fraction}")
    n = len(X)
    n_test = int(round(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise ValueError(f"train_test_split: test_fraction={test_fraction} of {n} rows leaves an empty side")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return Split(X[train], y[train], X[test], y[test])


def load_digits(test_fraction=0.25, seed=0):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; UCI, Alpaydin and Kaynak 1998).

    Shipped inside scikit-learn, so no download. Pixels (0..16) are scaled to [0, 1];
    returns ``Split(X_train, y_train, X_test, y_test)``, X float32 (n, 64), y int64,
    split at random with ``seed`` (test_fraction=0.25: 1348 train, 449 test).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn, which ships the 8x8 digits offline: "
                          "pip install scikit-learn (or pip install 'mlscale[lab]')") from e
    X, y = _sk_load_digits(return_X_y=True)
    X = (np.asarray(X, dtype=np.float64) / 16.0).astype(np.float32)  # (1797, 64) in [0, 1]
    return train_test_split(X, np.asarray(y, dtype=np.int64), test_fraction=test_fraction, seed=seed)
