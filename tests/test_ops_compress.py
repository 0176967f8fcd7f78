"""QSGD, sign (1-bit) and top-k compression against their references, and the
invariants that make them correct: QSGD is unbiased, error feedback loses nothing."""
import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops._common import BLOCK

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

SIZES = [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]
DTYPES = [np.float32, np.float64]
IMPLS = ["numba", "cuda", pytest.param("cupy", marks=pytest.mark.gpu)]


def _rand(n, dtype, seed):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


# ---- QSGD ---------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_qsgd_same_seed_same_levels_in_every_impl(impl, dtype, n):
    # multiples of 1/8: the sum of squares is exact in any order, so every impl gets the
    # same norm, and with one seed the same stochastic rounding, bit for bit
    x = (np.random.default_rng(n).integers(-64, 65, n) / 8).astype(dtype)
    nrm_ref, q_ref = ops.qsgd_quantize(x, 7, seed=123, impl="reference")
    nrm, q = ops.qsgd_quantize(x, 7, seed=123, impl=impl)
    assert nrm == nrm_ref == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-7)
    assert q.dtype == np.int8 and q.shape == x.shape
    np.testing.assert_array_equal(q, q_ref)
    assert np.all(np.abs(q) <= 7) and np.all(np.sign(q) * np.sign(x) >= 0)
    xh = ops.qsgd_dequantize(nrm, q, 7, dtype=dtype, impl=impl)
    np.testing.assert_array_equal(xh, ops.qsgd_dequantize_reference(nrm, q_ref, 7, dtype))


def test_qsgd_levels_bracket_each_value():
    x = _rand(1000, np.float64, 1)
    nrm, q = ops.qsgd_quantize(x, 4, seed=0)
    r = np.abs(x) / nrm * 4                        # each |level| is floor(r) or floor(r) + 1
    assert np.all((np.abs(q) == np.floor(r)) | (np.abs(q) == np.floor(r) + 1))


def test_qsgd_is_unbiased():
    x = _rand(64, np.float32, 2)
    levels, draws = 4, 2000
    acc = np.zeros(64)
    for seed in range(draws):
        nrm, q = ops.qsgd_quantize(x, levels, seed=seed)
        acc += ops.qsgd_dequantize(nrm, q, levels)
    # each coordinate: variance <= (norm/s)^2 / 4, so the mean's std <= norm / (2 s sqrt(T))
    sigma = np.linalg.norm(x) / (2 * levels * np.sqrt(draws))
    err = np.abs(acc / draws - x)
    assert err.max() < 5 * sigma
    assert err.max() > 0.05 * sigma                # it is random: not exact


def test_qsgd_seed_reproducible_and_zero_vector():
    x = _rand(100, np.float32, 3)
    a = ops.qsgd_quantize(x, 2, seed=7)[1]
    np.testing.assert_array_equal(a, ops.qsgd_quantize(x, 2, seed=7)[1])
    assert not np.array_equal(a, ops.qsgd_quantize(x, 2, seed=8)[1])
    g = np.random.default_rng(5)
    ops.qsgd_quantize(x, 2, seed=g)                # a Generator draws the seed
    nrm, q = ops.qsgd_quantize(np.zeros(5, np.float32), 3)
    assert nrm == 0.0 and not q.any()


# ---- sign compression with error feedback -----------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sign_compress_matches_reference(impl, dtype, n):
    x, r0 = _rand(n, dtype, 4), _rand(n, dtype, 5) * 0.1
    r_ref, r = r0.copy(), r0.copy()
    p_ref, s_ref = ops.sign_compress(x, r_ref, impl="reference")
    p, s = ops.sign_compress(x, r, impl=impl)
    assert p.dtype == np.uint8 and p.size == (n + 7) // 8       # 1 bit per element on the wire
    np.testing.assert_array_equal(p, p_ref)
    assert s == pytest.approx(s_ref, rel=1e-6) and s == pytest.approx(np.mean(np.abs(x + r0)), rel=1e-6)
    np.testing.assert_allclose(r, r_ref, rtol=1e-6, atol=1e-6)
    xh = ops.sign_decompress(p, s, n, dtype=dtype, impl=impl)
    np.testing.assert_allclose(xh, np.where(x + r0 >= 0, s, -s), rtol=1e-6)


def test_sign_bits_are_packbits_order():
    x = np.array([1, -1, -1, -1, -1, -1, -1, 2, -3], np.float32)   # bits 1000 0001 | 0...
    p, s = ops.sign_compress(x, np.zeros_like(x))
    np.testing.assert_array_equal(p, [0b10000001, 0])
    assert s == pytest.approx(12 / 9)


@pytest.mark.parametrize("impl", ["numba", "reference"])
def test_sign_error_feedback_loses_nothing(impl):
    rng = np.random.default_rng(6)
    n, steps = 3 * BLOCK + 5, 6
    r = np.zeros(n)
    sent = np.zeros(n)
    total = np.zeros(n)
    for _ in range(steps):
        x = rng.standard_normal(n)
        total += x
        p, s = ops.sign_compress(x, r, impl=impl)
        sent += ops.sign_decompress(p, s, n, dtype=np.float64, impl=impl)
    np.testing.assert_allclose(sent + r, total, atol=1e-12)
    assert np.abs(r).max() > 0.01                  # something was held back


# ---- top-k with error feedback ------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_topk_matches_reference(impl, dtype, n):
    x, r0 = _rand(n, dtype, 7), _rand(n, dtype, 8) * 0.1
    k = max(1, n // 10)
    r_ref, r = r0.copy(), r0.copy()
    i_ref, v_ref = ops.topk_compress(x, k, r_ref, impl="reference")
    i, v = ops.topk_compress(x, k, r, impl=impl)
    assert i.dtype == np.int32 and i.shape == (k,) and v.dtype == dtype
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(r, r_ref)
    c = x + r0                                           # the oracle, by sorting
    assert set(i.tolist()) == set(np.argsort(-np.abs(c))[:k].tolist())
    dense = ops.topk_decompress(i, v, n, impl=impl)
    np.testing.assert_array_equal(dense + r, c)


@pytest.mark.parametrize("impl", ["numba", "cuda"])
def test_topk_ties_take_the_lowest_indices(impl):
    x = np.array([1, 2, 2, 2, 0, -2, 3, 0, 0], np.float32)
    cases = [(1, [6]), (2, [1, 6]), (3, [1, 2, 6]), (5, [1, 2, 3, 5, 6]), (9, range(9))]
    if impl == "cuda":                    # the simulator is slow: some ties (3), all ties (5)
        cases = cases[2:4]
    for k, want in cases:
        i, v = ops.topk_compress(x, k, np.zeros_like(x), impl=impl)
        np.testing.assert_array_equal(i, list(want))
        np.testing.assert_array_equal(v, x[list(want)])


def test_topk_error_feedback_loses_nothing_and_decompress_accumulates():
    rng = np.random.default_rng(9)
    n, k, steps = 200, 10, 8
    r = np.zeros(n)
    sent = np.zeros(n)
    total = np.zeros(n)
    for _ in range(steps):
        x = rng.standard_normal(n)
        total += x
        i, v = ops.topk_compress(x, k, r)
        ops.topk_decompress(i, v, n, out=sent, accumulate=True)
    np.testing.assert_allclose(sent + r, total, atol=1e-12)


# ---- bad input ----------------------------------------------------------------------------
def test_compress_bad_inputs():
    x = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"levels=200 must be an int in \[1, 127\]"):
        ops.qsgd_quantize(x, 200)
    with pytest.raises(ValueError, match=r"k=11 must be an int in \[1, x.size=10\]"):
        ops.topk_compress(x, 11, np.zeros_like(x))
    with pytest.raises(TypeError, match="'residual' has dtype float64 but 'x' has dtype float32"):
        ops.sign_compress(x, np.zeros(10))
    with pytest.raises(ValueError, match=r"packed has 1 uint8 values but shape \(10,\) needs 2"):
        ops.sign_decompress(np.zeros(1, np.uint8), 1.0, 10)
    with pytest.raises(TypeError, match="seed=-1"):
        ops.qsgd_quantize(x, 2, seed=-1)
    with pytest.raises(ValueError, match=r"indices span \[0, 10\] but shape \(10,\) has 10"):
        ops.topk_decompress(np.array([0, 10]), np.ones(2, np.float32), 10)
    with pytest.raises(ValueError, match="needs C-contiguous arrays, but 'residual'"):
        ops.topk_compress(x, 2, np.zeros(20, np.float32)[::2], impl="numba")
