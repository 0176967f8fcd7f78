"""Fused SGD step with momentum, weight decay and Nesterov, in place (PyTorch semantics).

torch.optim.SGD (dampening 0), for every element:

    g   = grad + weight_decay * p
    buf = momentum * buf + g                         (only when momentum != 0)
    g   = g + momentum * buf  if nesterov  else buf
    p  -= lr * g

Fused, one pass reads p, g, buf and writes p, buf: 5 arrays of traffic (20 bytes per
fp32 parameter; 12 without momentum). NumPy's reference makes several passes and
temporaries. Bandwidth-bound: one multiply-add per 4 bytes moved.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _common as C
from ._common import cuda

OP = "sgd_step"


# ---- 1. reference: NumPy, the specification ------------------------------------------
def sgd_step_reference(params, grads, momentum_buf, lr, momentum=0.0, weight_decay=0.0,
                       nesterov=False):
    """Plain NumPy SGD step (torch.optim.SGD semantics), in place on params/momentum_buf."""
    g = grads + weight_decay * params if weight_decay != 0 else grads
    if momentum != 0:
        momentum_buf *= momentum
        momentum_buf += g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    params -= lr * g


# ---- 2. numba CPU ---------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _sgd_numba(p, g, lr, wd):
    for i in prange(p.size):
        p[i] -= lr * (g[i] + wd * p[i])


@njit(parallel=True, cache=True, fastmath=False)
def _sgd_momentum_numba(p, g, buf, lr, momentum, wd, nesterov):
    for i in prange(p.size):
        gi = g[i] + wd * p[i]
        b = momentum * buf[i] + gi
        buf[i] = b
        if nesterov:
            gi = gi + momentum * b
        else:
            gi = b
        p[i] -= lr * gi


# ---- 3. numba-CUDA (top level: the simulator needs it) --------------------------------
@cuda.jit
def _sgd_cuda(p, g, lr, wd):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        p[i] -= lr * (g[i] + wd * p[i])
        i += stride


@cuda.jit
def _sgd_momentum_cuda(p, g, buf, lr, momentum, wd, nesterov):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        gi = g[i] + wd * p[i]
        b = momentum * buf[i] + gi
        buf[i] = b
        if nesterov:
            gi = gi + momentum * b
        else:
            gi = b
        p[i] -= lr * gi
        i += stride


def _run_cuda(p, g, buf, lr, momentum, wd, nesterov):
    dp, dg = C.to_cuda(p), C.to_cuda(g)
    blocks = C.grid_for(p.size)
    if buf is None:
        _sgd_cuda[blocks, C.BLOCK](C.flat(dp), C.flat(dg), lr, wd)
    else:
        db = C.to_cuda(buf)
        _sgd_momentum_cuda[blocks, C.BLOCK](C.flat(dp), C.flat(dg), C.flat(db), lr, momentum, wd,
                                            nesterov)
        C.from_cuda(db, buf)
    C.from_cuda(dp, p)


# ---- 4. CuPy: kernels/sgd_step.cu -----------------------------------------------------
def _run_cupy(p, g, buf, lr, momentum, wd, nesterov):
    dp, dg = C.to_cupy(p), C.to_cupy(g)
    db = dp if buf is None else C.to_cupy(buf)   # not read when momentum == 0
    n = p.size
    k = C.cupy_kernel("sgd_step.cu", "sgd_step_" + C.suffix(p.dtype))
    k((C.grid_for(n),), (C.BLOCK,), (dp, dg, db, np.int64(n), lr, momentum, wd,
                                    np.int32(nesterov), np.int32(buf is not None)))
    C.from_cupy(dp, p)
    if buf is not None:
        C.from_cupy(db, buf)


# ---- the public function --------------------------------------------------------------
def sgd_step(params, grads, momentum_buf, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
             impl="auto"):
    """One SGD step, in place on ``params`` (and ``momentum_buf``); PyTorch semantics.

    params, grads, momentum_buf: arrays of one shape and float dtype, or equal-length lists
    of them (one per parameter). momentum_buf starts at zeros; it may be None when
    momentum == 0. impl: 'auto' (numpy -> numba, cupy -> cupy, numba device -> cuda),
    'reference', 'numba', 'cuda', 'cupy'. Returns None.
    """
    if momentum != 0 and momentum_buf is None:
        raise ValueError(f"{OP}: momentum={momentum} needs a momentum_buf (zeros like params)")
    if nesterov and momentum <= 0:
        raise ValueError(f"{OP}: nesterov=True needs momentum > 0 (got momentum={momentum})")
    if momentum == 0:
        momentum_buf = None
    for p, g, b in C.zip_lists(OP, params=params, grads=grads, momentum_buf=momentum_buf):
        _step_one(p, g, b, lr, momentum, weight_decay, nesterov, impl)


def _step_one(p, g, b, lr, momentum, wd, nesterov, impl):
    impl = C.resolve_impl(OP, impl, params=p, grads=g, momentum_buf=b)
    C.check_float(OP, "params", p)
    C.check_like(OP, "grads", g, "params", p)
    if b is not None:
        C.check_like(OP, "momentum_buf", b, "params", p)
    if impl == "reference":
        return sgd_step_reference(p, g, b, lr, momentum, wd, nesterov)
    C.check_contiguous(OP, impl, params=p, grads=g, momentum_buf=b)
    s = lambda v: C.as_scalar(p.dtype, v)  # noqa: E731
    if impl == "numba":
        if b is None:
            _sgd_numba(C.flat(p), C.flat(g), s(lr), s(wd))
        else:
            _sgd_momentum_numba(C.flat(p), C.flat(g), C.flat(b), s(lr), s(momentum), s(wd),
                                bool(nesterov))
    elif impl == "cuda":
        _run_cuda(p, g, b, s(lr), s(momentum), s(wd), bool(nesterov))
    else:
        _run_cupy(p, g, b, s(lr), s(momentum), s(wd), nesterov)
