"""QSGD: unbiased stochastic quantization to s levels (Alistarh et al. 2017, NeurIPS).

The quantizer, element by element::

    Q_s(x)_i = ||x||_2 * sign(x_i) * l_i / s,   r = |x_i| / ||x||_2 * s,
    l_i = floor(r) + 1 with probability r - floor(r), else floor(r)

so E[Q_s(x)] = x, with variance at most min(n/s^2, sqrt(n)/s) ||x||^2 (their Lemma 3.1).
On the wire: the norm (4 bytes) and one int8 sign*level per element (levels <= 127):
1 byte per element instead of 4; the paper's Elias coding of the levels sends fewer.
The random numbers are splitmix64(seed, i) (mlscale.ops._rng): the same bits in every
implementation, so one seed gives the same quantization everywhere.
Traffic: quantize reads x twice (norm, then levels) and writes 1 byte: 9 B per fp32
element; dequantize reads 1 byte and writes 4. Both memory-bound.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _common as C
from ._common import cuda
from . import _rng
from .norm import norm as _norm

OP = "qsgd_quantize"
MAX_LEVELS = 127          # sign * level fits int8


# ---- 1. reference -------------------------------------------------------------------------
def qsgd_quantize_reference(x, levels, seed, nrm):
    """int8 sign*level per element for the (given) norm nrm and seed."""
    s = x.dtype.type(levels)
    r = np.abs(x) / x.dtype.type(nrm) * s
    lo = np.floor(r)
    u = _rng.uniform_reference(seed, x.size).reshape(x.shape)
    lvl = np.minimum(lo + (u < (r - lo)), s)
    return (np.sign(x) * lvl).astype(np.int8)


def qsgd_dequantize_reference(nrm, q, levels, dtype=np.float32):
    scale = np.dtype(dtype).type(nrm / levels)
    return q.astype(dtype) * scale


# ---- 2. numba CPU -------------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _quantize_numba(x, q, nrm, s, seed):
    for i in prange(x.size):
        r = abs(x[i]) / nrm * s
        lo = np.floor(r)
        if _rng.uniform_numba(seed, i) < r - lo:
            lo += 1
        lvl = min(lo, s)
        q[i] = np.int8(-lvl if x[i] < 0 else lvl)


@njit(parallel=True, cache=True, fastmath=False)
def _dequantize_numba(q, out, scale):
    for i in prange(q.size):
        out[i] = q[i] * scale


# ---- 3. numba-CUDA ------------------------------------------------------------------------
@cuda.jit
def _quantize_cuda(x, q, nrm, s, seed):
    i = cuda.grid(1)
    while i < x.size:
        r = abs(x[i]) / nrm * s
        lo = math.floor(r)
        if _rng.uniform_cuda(seed, i) < r - lo:
            lo += 1
        lvl = min(lo, s)
        q[i] = -lvl if x[i] < 0 else lvl
        i += cuda.gridsize(1)


@cuda.jit
def _dequantize_cuda(q, out, scale):
    i = cuda.grid(1)
    while i < q.size:
        out[i] = q[i] * scale
        i += cuda.gridsize(1)


# ---- the public functions -----------------------------------------------------------------
def qsgd_quantize(x, levels, seed=None, impl="auto"):
    """Quantize x to ``levels`` levels (QSGD); returns (norm, q).

    x: float array (any shape). levels: s in [1, 127]. seed: an int, a
    np.random.Generator (draws one) or None (fresh entropy); one seed gives the same q in
    every impl. Returns norm (a float, ||x||_2 rounded to x's dtype) and q, an int8 array of
    x's shape (sign * level, on the same device as x). Wire: 4 + n bytes.
    """
    impl = C.resolve_impl(OP, impl, x=x)
    C.check_float(OP, "x", x)
    if not isinstance(levels, (int, np.integer)) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"{OP}: levels={levels!r} must be an int in [1, {MAX_LEVELS}] (int8 "
                         "levels on the wire)")
    seed = _rng.make_seed(seed)
    nrm = x.dtype.type(_norm(x, impl=impl))
    kind = C.array_kind(x)
    if nrm == 0 or x.size == 0:
        q = (np.zeros if kind == "numpy" else _zeros_like(kind))(x.shape, np.int8)
        return float(nrm), q
    if impl == "reference":
        return float(nrm), qsgd_quantize_reference(x, levels, seed, nrm)
    C.check_contiguous(OP, impl, x=x)
    s = x.dtype.type(levels)
    if impl == "numba":
        q = np.empty(x.shape, np.int8)
        _quantize_numba(C.flat(x), C.flat(q), nrm, s, seed)
    elif impl == "cuda":
        dq = C.cuda_module().device_array(x.shape, np.int8)
        _quantize_cuda[C.grid_for(x.size), C.BLOCK](C.flat(C.to_cuda(x)), C.flat(dq), nrm, s, seed)
        q = dq.copy_to_host() if kind == "numpy" else dq
    else:
        cp = C.import_cupy()
        dq = cp.empty(x.shape, cp.int8)
        k = C.cupy_kernel("qsgd.cu", "qsgd_quantize_" + C.suffix(x.dtype))
        k((C.grid_for(x.size),), (C.BLOCK,), (C.to_cupy(x), dq, np.int64(x.size), nrm, s, seed))
        q = dq.get() if kind == "numpy" else dq
    return float(nrm), q


def _zeros_like(kind):
    if kind == "cupy":
        return C.import_cupy().zeros
    cuda_ = C.cuda_module()

    def zeros(shape, dtype):
        d = cuda_.device_array(shape, dtype)
        _zero_cuda[C.grid_for(d.size), C.BLOCK](C.flat(d))
        return d
    return zeros


@cuda.jit
def _zero_cuda(a):
    i = cuda.grid(1)
    while i < a.size:
        a[i] = 0
        i += cuda.gridsize(1)


def qsgd_dequantize(norm, q, levels, out=None, dtype=np.float32, impl="auto"):
    """x_hat = norm * q / levels; returns out (new, of q's shape and ``dtype``, if None)."""
    impl = C.resolve_impl("qsgd_dequantize", impl, q=q, out=out)
    if np.dtype(q.dtype) != np.int8:
        raise TypeError(f"qsgd_dequantize: q has dtype {q.dtype}; pass the int8 array "
                        "qsgd_quantize returned")
    if out is not None:
        C.check_float("qsgd_dequantize", "out", out)
        if tuple(out.shape) != tuple(q.shape):
            raise ValueError(f"qsgd_dequantize: out has shape {tuple(out.shape)} but q has shape "
                             f"{tuple(q.shape)}; they must match")
        dtype = out.dtype
    dtype = np.dtype(dtype)
    kind = C.array_kind(q)
    if impl == "reference":
        r = qsgd_dequantize_reference(norm, q, levels, dtype)
        if out is None:
            return r
        out[...] = r
        return out
    C.check_contiguous("qsgd_dequantize", impl, q=q, out=out)
    scale = dtype.type(norm / levels)
    if impl == "numba":
        out = np.empty(q.shape, dtype) if out is None else out
        _dequantize_numba(C.flat(q), C.flat(out), scale)
    elif impl == "cuda":
        dout = C.cuda_module().device_array(q.shape, dtype) if out is None else C.to_cuda(out)
        _dequantize_cuda[C.grid_for(q.size), C.BLOCK](C.flat(C.to_cuda(q)), C.flat(dout), scale)
        if out is None:
            return dout.copy_to_host() if kind == "numpy" else dout
        C.from_cuda(dout, out)
    else:
        cp = C.import_cupy()
        dout = cp.empty(q.shape, dtype) if out is None else C.to_cupy(out)
        k = C.cupy_kernel("qsgd.cu", "qsgd_dequantize_" + C.suffix(dtype))
        k((C.grid_for(q.size),), (C.BLOCK,), (C.to_cupy(q), dout, np.int64(q.size), scale))
        if out is None:
            return dout.get() if kind == "numpy" else dout
        C.from_cupy(dout, out)
    return out
