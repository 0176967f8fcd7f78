"""Fused Adam / AdamW step, in place, with bias correction (PyTorch semantics).

Kingma and Ba 2015 (Algorithm 1); AdamW: Loshchilov and Hutter 2019 (decoupled weight
decay). torch.optim.Adam / AdamW (amsgrad=False), for every element, with t = ``step``:

    Adam : g = grad + weight_decay * p          AdamW: p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

Fused, one pass reads p, g, m, v and writes p, m, v: 7 arrays, 28 bytes per fp32
parameter, about 12 flops: bandwidth-bound (REFERENCES.md: good kernels reach 70-90%).
The NumPy reference makes ~15 passes with temporaries.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import _common as C
from ._common import cuda

OP = "adam_step"


def _coefficients(step, lr, beta1, beta2):
    """Host-side bias corrections: step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)."""
    return lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step)


# ---- 1. reference: NumPy, the specification ------------------------------------------
def adam_step_reference(params, grads, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                        weight_decay=0.0, adamw=False):
    """Plain NumPy Adam/AdamW step (torch.optim semantics), in place on params, m, v."""
    g = grads
    if weight_decay != 0:
        if adamw:
            params *= 1 - lr * weight_decay
        else:
            g = grads + weight_decay * params
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    step_size, bc2_sqrt = _coefficients(step, lr, beta1, beta2)
    params -= step_size * m / (np.sqrt(v) / bc2_sqrt + eps)


# ---- 2. numba CPU ---------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _adam_numba(p, g, m, v, step_size, bc2_sqrt, beta1, c1, beta2, c2, eps, l2, decay):
    # c1 = 1 - beta1 and c2 = 1 - beta2 (rounded once, on the host); l2: Adam's coupled
    # weight decay; decay: AdamW's multiplier 1 - lr*wd (1 for Adam)
    for i in prange(p.size):
        pi = p[i] * decay
        gi = g[i] + l2 * pi
        mi = beta1 * m[i] + c1 * gi
        vi = beta2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


# ---- 3. numba-CUDA (top level: the simulator needs it) --------------------------------
@cuda.jit
def _adam_cuda(p, g, m, v, step_size, bc2_sqrt, beta1, c1, beta2, c2, eps, l2, decay):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.size:
        pi = p[i] * decay
        gi = g[i] + l2 * pi
        mi = beta1 * m[i] + c1 * gi
        vi = beta2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)
        i += stride


def _run_cuda(p, g, m, v, *scalars):
    dp, dg, dm, dv = (C.to_cuda(a) for a in (p, g, m, v))
    _adam_cuda[C.grid_for(p.size), C.BLOCK](*(C.flat(a) for a in (dp, dg, dm, dv)), *scalars)
    for dev, host in ((dp, p), (dm, m), (dv, v)):
        C.from_cuda(dev, host)


# ---- 4. CuPy: kernels/adam_step.cu ----------------------------------------------------
def _run_cupy(p, g, m, v, *scalars):
    dp, dg, dm, dv = (C.to_cupy(a) for a in (p, g, m, v))
    k = C.cupy_kernel("adam_step.cu", "adam_step_" + C.suffix(p.dtype))
    k((C.grid_for(p.size),), (C.BLOCK,), (dp, dg, dm, dv, np.int64(p.size), *scalars))
    for dev, host in ((dp, p), (dm, m), (dv, v)):
        C.from_cupy(dev, host)


# ---- the public function --------------------------------------------------------------
def adam_step(params, grads, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, adamw=False, impl="auto"):
    """One Adam (adamw=False) or AdamW (adamw=True) step, in place on params, m and v.

    params, grads, m, v: arrays of one shape and float dtype (m, v start at zeros), or
    equal-length lists of them. step: the 1-based step count, already incremented (the
    first call passes 1). impl: 'auto' (numpy -> numba, cupy -> cupy, numba device ->
    cuda), 'reference', 'numba', 'cuda', 'cupy'. Returns None.
    """
    if int(step) != step or step < 1:
        raise ValueError(f"{OP}: step={step!r} must be the 1-based step count (an int >= 1, "
                         "incremented before the call)")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"{OP}: betas must be in [0, 1), got beta1={beta1}, beta2={beta2}")
    for p, g, mm, vv in C.zip_lists(OP, params=params, grads=grads, m=m, v=v):
        _step_one(p, g, mm, vv, int(step), lr, beta1, beta2, eps, weight_decay, adamw, impl)


def _step_one(p, g, m, v, step, lr, beta1, beta2, eps, wd, adamw, impl):
    impl = C.resolve_impl(OP, impl, params=p, grads=g, m=m, v=v)
    C.check_float(OP, "params", p)
    for name, a in (("grads", g), ("m", m), ("v", v)):
        C.check_like(OP, name, a, "params", p)
    if impl == "reference":
        return adam_step_reference(p, g, m, v, step, lr, beta1, beta2, eps, wd, adamw)
    C.check_contiguous(OP, impl, params=p, grads=g, m=m, v=v)
    step_size, bc2_sqrt = _coefficients(step, lr, beta1, beta2)
    l2, decay = (0.0, 1.0 - lr * wd) if adamw else (wd, 1.0)
    scalars = tuple(C.as_scalar(p.dtype, s) for s in
                    (step_size, bc2_sqrt, beta1, 1 - beta1, beta2, 1 - beta2, eps, l2, decay))
    if impl == "numba":
        _adam_numba(*(C.flat(a) for a in (p, g, m, v)), *scalars)
    elif impl == "cuda":
        _run_cuda(p, g, m, v, *scalars)
    else:
        _run_cupy(p, g, m, v, *scalars)
