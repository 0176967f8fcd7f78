"""Fused optimizer steps (mlscale.ops.sgd_step / adam_step) against their NumPy references.

Every implementation, awkward sizes (1, block-1, block, 3*block+5), float32 and float64,
several steps in a row (momentum and Adam's moments carry state between steps).
numba-CUDA runs in the CUDA simulator here (small sizes); cupy tests need a GPU.
"""
import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops._common import BLOCK

SIZES = [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]
DTYPES = [np.float32, np.float64]
IMPLS = ["numba", "cuda", pytest.param("cupy", marks=pytest.mark.gpu)]
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


def _arrays(n, dtype, k, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


def _run_sgd(impl, n, dtype, steps, **kw):
    p, = _arrays(n, dtype, 1, seed=1)
    grads = _arrays(n, dtype, steps, seed=2)
    buf = np.zeros_like(p)
    for g in grads:
        ops.sgd_step(p, g, buf, 0.05, impl=impl, **kw)
    return p, buf


SGD_CONFIGS = [dict(momentum=0.0), dict(momentum=0.9),
               dict(momentum=0.9, weight_decay=0.01, nesterov=True)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sgd_step_matches_reference(impl, dtype, n):
    kw = SGD_CONFIGS[2]
    p, buf = _run_sgd(impl, n, dtype, 3, **kw)
    p_ref, buf_ref = _run_sgd("reference", n, dtype, 3, **kw)
    np.testing.assert_allclose(p, p_ref, **TOL[dtype])
    np.testing.assert_allclose(buf, buf_ref, **TOL[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", SGD_CONFIGS[:2], ids=["plain", "momentum"])
def test_sgd_step_configs(impl, kw):
    n = 3 * BLOCK + 5
    p, buf = _run_sgd(impl, n, np.float32, 3, **kw)
    p_ref, buf_ref = _run_sgd("reference", n, np.float32, 3, **kw)
    np.testing.assert_allclose(p, p_ref, **TOL[np.float32])
    np.testing.assert_allclose(buf, buf_ref, **TOL[np.float32])


def test_sgd_reference_is_pytorch_sgd_by_hand():
    # two steps of momentum 0.9, wd 0.1, nesterov, worked out on paper for one element
    p, g, buf = np.array([1.0]), np.array([0.5]), np.zeros(1)
    ops.sgd_step_reference(p, g, buf, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    # g = 0.5 + 0.1 = 0.6; buf = 0.6; g = 0.6 + 0.9*0.6 = 1.14; p = 1 - 0.114
    assert buf[0] == pytest.approx(0.6) and p[0] == pytest.approx(0.886)
    ops.sgd_step_reference(p, g, buf, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    gi = 0.5 + 0.1 * 0.886
    b = 0.9 * 0.6 + gi
    assert buf[0] == pytest.approx(b) and p[0] == pytest.approx(0.886 - 0.1 * (gi + 0.9 * b))


def test_sgd_step_accepts_lists_of_params():
    ps = _arrays(10, np.float32, 2, seed=3)
    gs = _arrays(10, np.float32, 2, seed=4)
    bufs = [np.zeros_like(p) for p in ps]
    ref = [p.copy() for p in ps]
    ops.sgd_step(ps, gs, bufs, 0.1, momentum=0.5)
    for r, g in zip(ref, gs):
        ops.sgd_step_reference(r, g, np.zeros_like(r), 0.1, momentum=0.5)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p, r, rtol=1e-6)


def _run_adam(impl, n, dtype, steps, **kw):
    p, = _arrays(n, dtype, 1, seed=5)
    grads = _arrays(n, dtype, steps, seed=6)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        ops.adam_step(p, g, m, v, t, 1e-2, impl=impl, **kw)
    return p, m, v


ADAM_CONFIGS = [dict(weight_decay=0.01, adamw=False), dict(weight_decay=0.01, adamw=True)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kw", ADAM_CONFIGS, ids=["adam", "adamw"])
def test_adam_step_matches_reference(impl, dtype, n, kw):
    out = _run_adam(impl, n, dtype, 3, **kw)
    ref = _run_adam("reference", n, dtype, 3, **kw)
    for a, r in zip(out, ref):
        np.testing.assert_allclose(a, r, **TOL[dtype])


def test_adam_first_step_moves_each_param_by_lr():
    # bias correction: at t=1, m_hat = g and v_hat = g^2, so the step is lr * sign(g)
    p = np.zeros(5, np.float64)
    g = np.array([-3.0, -0.5, 0.25, 1.0, 40.0])
    m, v = np.zeros(5), np.zeros(5)
    ops.adam_step(p, g, m, v, 1, 0.01, eps=0.0, impl="numba")
    np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-12)
    np.testing.assert_allclose(m, 0.1 * g)
    np.testing.assert_allclose(v, 0.001 * g * g)


def test_adamw_decays_params_not_the_gradient():
    p = np.ones(4)
    z = np.zeros(4)
    ops.adam_step(p, z.copy(), z.copy(), z.copy(), 1, 0.1, weight_decay=0.5, adamw=True)
    np.testing.assert_allclose(p, 1 - 0.1 * 0.5)            # zero grad: only the decay
    p = np.ones(4)
    ops.adam_step(p, z.copy(), z.copy(), z.copy(), 1, 0.1, weight_decay=0.5, adamw=False)
    np.testing.assert_allclose(p, 1 - 0.1, rtol=1e-6)       # Adam: wd*p is the gradient


# ---- bad input --------------------------------------------------------------------------
def test_optim_bad_inputs_name_the_argument():
    p = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"'grads' has shape \(7,\) but 'params' has shape \(8,\)"):
        ops.sgd_step(p, np.zeros(7, np.float32), None, 0.1)
    with pytest.raises(TypeError, match=r"'m' has dtype float64 but 'params' has dtype float32"):
        ops.adam_step(p, p.copy(), np.zeros(8), p.copy(), 1, 0.1)
    with pytest.raises(ValueError, match=r"unknown impl='gpu'"):
        ops.sgd_step(p, p.copy(), None, 0.1, impl="gpu")
    with pytest.raises(ValueError, match="momentum=0.9 needs a momentum_buf"):
        ops.sgd_step(p, p.copy(), None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="step=0 must be the 1-based step count"):
        ops.adam_step(p, p.copy(), p.copy(), p.copy(), 0, 0.1)
    with pytest.raises(TypeError, match="'params' has dtype int64"):
        q = np.zeros(8, np.int64)
        ops.sgd_step(q, q.copy(), None, 0.1)


def test_optim_rejects_strided_views_for_kernels_but_reference_works():
    big = np.ones(16, np.float32)
    view = big[::2]
    g = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=r"needs C-contiguous arrays, but 'params' .*strides \(8,\)"):
        ops.sgd_step(view, g, None, 0.5, impl="numba")
    ops.sgd_step(view, g, None, 0.5, impl="reference")
    np.testing.assert_array_equal(big, np.tile([0.5, 1.0], 8))


def test_optim_rejects_mixed_host_and_device_arrays():
    from numba import cuda

    p = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"arrays live in different places \(params=numpy, grads=cuda"):
        ops.sgd_step(p, cuda.to_device(p), None, 0.1, impl="cuda")


def test_auto_on_device_arrays_runs_the_cuda_kernel_in_place():
    from numba import cuda

    p, g = _arrays(BLOCK + 3, np.float32, 2, seed=9)
    ref = p.copy()
    dp, dg = cuda.to_device(p), cuda.to_device(g)
    ops.sgd_step(dp, dg, None, 0.25)                  # auto -> cuda, stays on the device
    ops.sgd_step_reference(ref, g, None, 0.25)
    np.testing.assert_allclose(dp.copy_to_host(), ref, rtol=1e-6)
