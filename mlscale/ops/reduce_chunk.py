"""Ring all-reduce step: dst = (dst + src) * scale, in place.

One reduce-scatter step of the ring all-reduce (Patarasuk and Yuan 2009): a rank adds
the chunk it received (``src``) into its own (``dst``); scale = 1/world_size on the last
step turns the sum into a mean. Reads dst, src and writes dst: 3 arrays, 12 bytes per
fp32 element for 2 flops: memory-bound.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _common as C
from ._common import cuda

OP = "reduce_chunk"


# ---- 1. reference ---------------------------------------------------------------------
def reduce_chunk_reference(dst, src, scale=1.0):
    """dst = (dst + src) * scale, in place; returns dst."""
    dst += src
    if scale != 1:
        dst *= scale
    return dst


# ---- 2. numba CPU ---------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _reduce_chunk_numba(dst, src, scale):
    for i in prange(dst.size):
        dst[i] = (dst[i] + src[i]) * scale


# ---- 3. numba-CUDA --------------------------------------------------------------------
@cuda.jit
def _reduce_chunk_cuda(dst, src, scale):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < dst.size:
        dst[i] = (dst[i] + src[i]) * scale
        i += stride


# ---- the public function --------------------------------------------------------------
def reduce_chunk(dst, src, scale=1.0, impl="auto"):
    """In place ``dst = (dst + src) * scale`` (one ring reduce step); returns dst.

    dst, src: arrays of one shape and float dtype. impl: 'auto' (numpy -> numba, cupy ->
    cupy, numba device array -> cuda), 'reference', 'numba', 'cuda', 'cupy'.
    """
    impl = C.resolve_impl(OP, impl, dst=dst, src=src)
    C.check_float(OP, "dst", dst)
    C.check_like(OP, "src", src, "dst", dst)
    if impl == "reference":
        return reduce_chunk_reference(dst, src, scale)
    C.check_contiguous(OP, impl, dst=dst, src=src)
    s = C.as_scalar(dst.dtype, scale)
    if impl == "numba":
        _reduce_chunk_numba(C.flat(dst), C.flat(src), s)
    elif impl == "cuda":
        dd, ds = C.to_cuda(dst), C.to_cuda(src)
        _reduce_chunk_cuda[C.grid_for(dst.size), C.BLOCK](C.flat(dd), C.flat(ds), s)
        C.from_cuda(dd, dst)
    else:
        dd, ds = C.to_cupy(dst), C.to_cupy(src)
        k = C.cupy_kernel("reduce_chunk.cu", "reduce_chunk_" + C.suffix(dst.dtype))
        k((C.grid_for(dst.size),), (C.BLOCK,), (dd, ds, np.int64(dst.size), s))
        C.from_cupy(dd, dst)
    return dst
