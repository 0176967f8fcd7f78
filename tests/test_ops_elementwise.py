"""reduce_chunk, weighted_sum, norm / global_norm / clip_by_global_norm against their
NumPy references, every implementation, sizes 1, block-1, block, 3*block+5."""
import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops._common import BLOCK

SIZES = [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]
DTYPES = [np.float32, np.float64]
IMPLS = ["numba", "cuda", pytest.param("cupy", marks=pytest.mark.gpu)]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}


def _rand(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_reduce_chunk(impl, dtype, n):
    dst, src = _rand(n, dtype, 1), _rand(n, dtype, 2)
    ref = ops.reduce_chunk_reference(dst.copy(), src, 0.25)
    out = ops.reduce_chunk(dst, src, scale=0.25, impl=impl)
    assert out is dst                                   # in place, returns dst
    np.testing.assert_array_equal(dst, ref)             # two roundings, same in every impl
    np.testing.assert_allclose(dst, (_rand(n, dtype, 1) + src) * 0.25, **TOL[dtype])


def test_reduce_chunk_scale_one_is_a_plain_sum():
    dst = np.arange(5, dtype=np.float32)
    ops.reduce_chunk(dst, np.ones(5, np.float32))
    np.testing.assert_array_equal(dst, np.arange(1, 6))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_weighted_sum_list_and_stacked(impl, dtype, n):
    xs = [_rand(n, dtype, s) for s in range(3)]
    w = [0.5, -0.25, 2.0]
    expect = 0.5 * xs[0].astype(np.float64) - 0.25 * xs[1] + 2.0 * xs[2]
    ref = ops.weighted_sum_reference(xs, w)
    got_list = ops.weighted_sum(xs, w, impl=impl)
    got_stacked = ops.weighted_sum(np.stack(xs), np.array(w), impl=impl)
    for got in (got_list, got_stacked):
        assert got.dtype == dtype and got.shape == (n,)
        np.testing.assert_allclose(got, ref, **TOL[dtype])
        np.testing.assert_allclose(got, expect, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_weighted_sum_fedavg_weights_and_out_aliasing():
    xs = [np.full((2, 3), v, np.float64) for v in (1.0, 2.0, 4.0)]
    out = xs[0]                                         # may write over one of the inputs
    r = ops.weighted_sum(xs, [0.5, 0.25, 0.25], out=out)
    assert r is out
    np.testing.assert_array_equal(out, np.full((2, 3), 0.5 + 0.5 + 1.0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_norm(impl, dtype, n):
    x = _rand(n, dtype, 3)
    assert ops.norm(x, impl=impl) == pytest.approx(ops.norm_reference(x), rel=1e-14)
    assert ops.norm_reference(x) == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
def test_global_norm_and_clip(impl):
    arrays = [_rand(BLOCK + 3, np.float32, 4) * 3, _rand((4, 5), np.float32, 5)]
    before = [a.copy() for a in arrays]
    total = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in before))
    assert ops.global_norm(arrays, impl=impl) == pytest.approx(total, rel=1e-12)
    got = ops.clip_by_global_norm(arrays, max_norm=1.0, impl=impl)
    assert got == pytest.approx(total, rel=1e-12)                 # the norm before clipping
    for a, b in zip(arrays, before):
        np.testing.assert_allclose(a, b * (1.0 / (total + 1e-6)), rtol=1e-6)
    assert ops.global_norm(arrays, impl="reference") == pytest.approx(1.0, rel=1e-5)
    again = [a.copy() for a in arrays]
    ops.clip_by_global_norm(arrays, max_norm=10.0, impl=impl)      # below max: untouched
    for a, b in zip(arrays, again):
        np.testing.assert_array_equal(a, b)


def test_norm_of_1d_large_numba_matches_reference():
    x = _rand(100_003, np.float32, 6)
    assert ops.norm(x) == pytest.approx(ops.norm_reference(x), rel=1e-13)


# ---- bad input ----------------------------------------------------------------------------
def test_elementwise_bad_inputs():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"reduce_chunk: 'src' has shape \(5,\) but 'dst' has shape \(4,\)"):
        ops.reduce_chunk(a, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match=r"reduce_chunk: 'src' has dtype float64 but 'dst' has dtype float32"):
        ops.reduce_chunk(a, np.zeros(4))
    with pytest.raises(ValueError, match=r"weighted_sum: weights has shape \(2,\) but there are 3 arrays"):
        ops.weighted_sum([a, a, a], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"'xs\[1\]' has shape \(3,\) but 'xs\[0\]' has shape \(4,\)"):
        ops.weighted_sum([a, np.zeros(3, np.float32)], [1.0, 2.0])
    with pytest.raises(ValueError, match="needs C-contiguous arrays, but 'dst'"):
        ops.reduce_chunk(np.zeros(8, np.float32)[::2], a, impl="cuda")
    with pytest.raises(TypeError, match=r"norm: 'x' has dtype int64"):
        ops.norm(np.arange(3))
    with pytest.raises(ValueError, match="max_norm=0 must be > 0"):
        ops.clip_by_global_norm([a], 0)
    with pytest.raises(TypeError, match="argument 'x' is a list, not an array"):
        ops.norm([1.0, 2.0])


def test_auto_picks_numpy_for_small_arrays_and_numba_for_large():
    from mlscale.ops import _common as C

    small = np.zeros(1000, np.float32)
    big = np.zeros(C.AUTO_NUMBA_MIN, np.float32)
    assert C.resolve_impl("op", "auto", x=small) == "reference"
    assert C.resolve_impl("op", "auto", x=big) == "numba"
    half = np.zeros(C.AUTO_NUMBA_MIN // 2, np.float32)
    assert C.resolve_impl("op", "auto", x=half, y=half) == "numba"  # all arrays together
    assert C.resolve_impl("op", "numba", x=small) == "numba"  # an explicit choice stands
