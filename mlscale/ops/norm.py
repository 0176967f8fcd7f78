"""L2 norms and clipping by global norm.

``norm(x) = sqrt(sum x_i^2)``, accumulated in float64 whatever the input dtype.
``global_norm(arrays)`` is the norm of all arrays concatenated, and
``clip_by_global_norm(arrays, max_norm)`` scales them in place by
max_norm / (norm + 1e-6) when that is below 1 (``torch.nn.utils.clip_grad_norm_``; Pascanu
et al. 2013). A norm reads each element once: 4 bytes per fp32 element, 2 flops:
memory-bound (on CPU without fast-math, numba keeps 4 independent partial sums per
thread so the float64 add latency does not become the bound).
"""
from __future__ import annotations

import math

import numpy as np
from numba import float64, njit, prange

from . import _common as C
from ._common import cuda

OP = "norm"
CHUNK = 4096          # elements per numba task
MAX_BLOCKS = 1024     # reduction grids: each block writes one partial sum


# ---- 1. reference ---------------------------------------------------------------------
def norm_reference(x) -> float:
    """sqrt(sum x_i^2) with float64 accumulation."""
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


def global_norm_reference(arrays) -> float:
    return float(math.sqrt(sum(norm_reference(a) ** 2 for a in arrays)))


# ---- 2. numba CPU ---------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _sumsq_numba(x):
    n = x.size
    total = 0.0
    for b in prange((n + CHUNK - 1) // CHUNK):
        lo = b * CHUNK
        hi = min(lo + CHUNK, n)
        a0 = a1 = a2 = a3 = 0.0
        i = lo
        while i + 4 <= hi:           # four independent chains: no add-latency bound
            v0, v1, v2, v3 = float64(x[i]), float64(x[i + 1]), float64(x[i + 2]), float64(x[i + 3])
            a0 += v0 * v0
            a1 += v1 * v1
            a2 += v2 * v2
            a3 += v3 * v3
            i += 4
        while i < hi:
            v0 = float64(x[i])
            a0 += v0 * v0
            i += 1
        total += (a0 + a1) + (a2 + a3)
    return total


@njit(parallel=True, cache=True, fastmath=False)
def _scale_numba(x, c):
    for i in prange(x.size):
        x[i] *= c


# ---- 3. numba-CUDA: block tree reduction in shared memory, one partial per block ------
@cuda.jit
def _sumsq_cuda(x, partials):
    sdata = cuda.shared.array(C.BLOCK, float64)
    tid = cuda.threadIdx.x
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    while i < x.size:
        v = float64(x[i])
        acc += v * v
        i += stride
    total = C.block_sum(sdata, acc)
    if tid == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def _scale_cuda(x, c):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < x.size:
        x[i] *= c
        i += stride


def _sumsq(x, impl) -> float:
    if impl == "reference":
        return norm_reference(x) ** 2
    C.check_contiguous(OP, impl, x=x)
    if x.size == 0:
        return 0.0
    if impl == "numba":
        return float(_sumsq_numba(C.flat(x)))
    blocks = C.grid_for(x.size, max_blocks=MAX_BLOCKS)
    if impl == "cuda":
        cuda_ = C.cuda_module()
        partials = cuda_.device_array(blocks, dtype=np.float64)
        _sumsq_cuda[blocks, C.BLOCK](C.flat(C.to_cuda(x)), partials)
        return float(partials.copy_to_host().sum())
    cp = C.import_cupy()
    dx = C.to_cupy(x)
    partials = cp.empty(blocks, dtype=cp.float64)
    k = C.cupy_kernel("norm.cu", "sumsq_" + C.suffix(x.dtype))
    k((blocks,), (C.BLOCK,), (dx, partials, np.int64(x.size)))
    return float(partials.sum())


# ---- the public functions -------------------------------------------------------------
def norm(x, impl="auto") -> float:
    """L2 norm of x (any shape, float dtype), accumulated in float64; returns a float."""
    impl = C.resolve_impl(OP, impl, x=x)
    C.check_float(OP, "x", x)
    return math.sqrt(_sumsq(x, impl))


def global_norm(arrays, impl="auto") -> float:
    """L2 norm of all arrays together: sqrt(sum_k norm(arrays[k])^2)."""
    arrays = C.as_list(arrays)[0]
    named = {f"arrays[{j}]": a for j, a in enumerate(arrays)}
    impl = C.resolve_impl("global_norm", impl, **named)
    for name, a in named.items():
        C.check_float("global_norm", name, a)
    return math.sqrt(sum(_sumsq(a, impl) for a in arrays))


def clip_by_global_norm(arrays, max_norm, impl="auto") -> float:
    """Scale arrays in place by max_norm / (norm + 1e-6) when that is < 1; returns the
    global norm before clipping (``torch.nn.utils.clip_grad_norm_``)."""
    if not max_norm > 0:
        raise ValueError(f"clip_by_global_norm: max_norm={max_norm!r} must be > 0")
    arrays = C.as_list(arrays)[0]
    total = global_norm(arrays, impl=impl)
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        impl = C.resolve_impl("clip_by_global_norm", impl,
                              **{f"arrays[{j}]": a for j, a in enumerate(arrays)})
        for a in arrays:
            c = C.as_scalar(a.dtype, coef)
            kind = C.array_kind(a)
            if kind == "cuda":
                _scale_cuda[C.grid_for(a.size), C.BLOCK](C.flat(a), c)
            elif kind == "cupy" or impl == "reference" or not C.is_contiguous(a):
                a *= c
            elif impl == "cuda":
                da = C.to_cuda(a)
                _scale_cuda[C.grid_for(a.size), C.BLOCK](C.flat(da), c)
                C.from_cuda(da, a)
            else:                      # numba (and cupy on host arrays: scaled on the host)
                _scale_numba(C.flat(a), c)
    return total
