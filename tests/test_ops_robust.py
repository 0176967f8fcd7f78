"""Coordinate-wise median and trimmed mean (Yin et al. 2018) against NumPy."""
import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops._common import BLOCK

SIZES = [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]
DTYPES = [np.float32, np.float64]
IMPLS = ["numba", "cuda", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_median_and_trimmed_mean(impl, dtype, n):
    rng = np.random.default_rng(n)
    for k in (5, 6):                                        # odd and even numbers of clients
        xs = rng.standard_normal((k, n)).astype(dtype)
        med = ops.coordinate_median(xs, impl=impl)
        assert med.dtype == dtype and med.shape == (n,)
        np.testing.assert_array_equal(med, np.median(xs, axis=0))
        tm = ops.trimmed_mean(list(xs), 2, impl=impl)
        want = np.sort(xs.astype(np.float64), axis=0)[2:k - 2].mean(axis=0)
        np.testing.assert_allclose(tm, want, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_robust_to_byzantine_clients():
    honest = np.ones((7, 50))
    xs = np.vstack([honest, np.full((2, 50), 1e6)])        # 2 of 9 clients send garbage
    np.testing.assert_array_equal(ops.coordinate_median(xs), 1.0)
    np.testing.assert_array_equal(ops.trimmed_mean(xs, 2), 1.0)
    np.testing.assert_array_equal(ops.trimmed_mean(xs, 0.25), 1.0)   # b = floor(0.25 * 9) = 2
    assert ops.trimmed_mean(xs, 0)[0] > 1e5                            # no trimming: the mean


def test_robust_keeps_client_shape():
    xs = [np.full((2, 3), v, np.float32) for v in (3.0, 1.0, 2.0)]
    np.testing.assert_array_equal(ops.coordinate_median(xs), np.full((2, 3), 2.0))


def test_robust_bad_inputs():
    xs = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"trim=2 drops 2 values from each end of k=4"):
        ops.trimmed_mean(xs, 2)
    with pytest.raises(ValueError, match=r"must be a \(k, n\) array or a list"):
        ops.coordinate_median(np.zeros(3))
    with pytest.raises(ValueError, match=r"per-thread buffer of 64; got k=65"):
        ops.coordinate_median(np.zeros((65, 2)), impl="cuda")
    with pytest.raises(ValueError, match=r"'xs\[1\]' has shape \(2,\) but 'xs\[0\]' has shape \(3,\)"):
        ops.coordinate_median([np.zeros(3), np.zeros(2)])
