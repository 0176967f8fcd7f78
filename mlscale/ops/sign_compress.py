"""1-bit (sign) compression with error feedback (Seide et al. 2014, "1-bit stochastic
gradient descent ..."; error feedback as in Karimireddy et al. 2019, EF-SignSGD).

    c = x + residual                       (add back what was not sent last time)
    scale = mean |c|,  sent_i = +scale if c_i >= 0 else -scale
    residual = c - sent                    (in place: the error fed back next step)

On the wire: one bit per element, packed 8 to a byte in np.packbits order (the first
element is the most significant bit), plus the fp32 scale: n/8 + 4 bytes, 32x less than
fp32. Over steps, sum(sent) + residual = sum(inputs) (up to rounding): nothing is lost,
only delayed. Traffic: pass 1 reads x, r (8 B per fp32 element) for mean |c|; pass 2
reads x, r and writes r and 1/8 byte: ~20 B per element. Memory-bound.
"""
from __future__ import annotations

import numpy as np
from numba import float64, njit, prange, uint8

from . import _common as C
from ._common import cuda

OP = "sign_compress"
CHUNK = 4096


# ---- 1. reference -------------------------------------------------------------------------
def sign_compress_reference(x, residual):
    """(packed uint8 bits, scale); updates residual in place."""
    c = x + residual
    scale = x.dtype.type(np.mean(np.abs(c), dtype=np.float64))
    bits = c >= 0
    residual[...] = c - np.where(bits, scale, -scale)
    return np.packbits(bits.reshape(-1)), float(scale)


def sign_decompress_reference(packed, scale, n, dtype=np.float32):
    bits = np.unpackbits(packed, count=n).astype(bool)
    s = np.dtype(dtype).type(scale)
    return np.where(bits, s, -s).astype(dtype)


# ---- 2. numba CPU -------------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _abs_sum_numba(x, r):
    n = x.size
    total = 0.0
    for b in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = b * CHUNK, min((b + 1) * CHUNK, n)
        a0 = a1 = a2 = a3 = 0.0          # four chains: the add latency is not the bound
        i = lo
        while i + 4 <= hi:
            a0 += float64(abs(x[i] + r[i]))
            a1 += float64(abs(x[i + 1] + r[i + 1]))
            a2 += float64(abs(x[i + 2] + r[i + 2]))
            a3 += float64(abs(x[i + 3] + r[i + 3]))
            i += 4
        while i < hi:
            a0 += float64(abs(x[i] + r[i]))
            i += 1
        total += (a0 + a1) + (a2 + a3)
    return total


@njit(parallel=True, cache=True, fastmath=False)
def _pack_numba(x, r, scale, packed):
    n = x.size
    for j in prange(packed.size):
        byte = 0
        for b in range(8):
            i = 8 * j + b
            if i < n:
                c = x[i] + r[i]
                if c >= 0:
                    byte |= 128 >> b
                    r[i] = c - scale
                else:
                    r[i] = c + scale
        packed[j] = byte


@njit(parallel=True, cache=True, fastmath=False)
def _unpack_numba(packed, scale, out):
    n = out.size
    for j in prange(packed.size):
        byte = packed[j]
        for b in range(8):
            i = 8 * j + b
            if i < n:
                out[i] = scale if (byte >> (7 - b)) & 1 else -scale


# ---- 3. numba-CUDA: partial sums per block, then one thread per output byte ----------------
@cuda.jit
def _abs_sum_cuda(x, r, partials):
    sdata = cuda.shared.array(C.BLOCK, float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    i = cuda.grid(1)
    while i < x.size:
        acc += float64(abs(x[i] + r[i]))
        i += cuda.gridsize(1)
    total = C.block_sum(sdata, acc)
    if tid == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def _pack_cuda(x, r, scale, packed):
    n = x.size
    j = cuda.grid(1)
    while j < packed.size:
        byte = 0
        for b in range(8):
            i = 8 * j + b
            if i < n:
                c = x[i] + r[i]
                if c >= 0:
                    byte |= 128 >> b
                    r[i] = c - scale
                else:
                    r[i] = c + scale
        packed[j] = uint8(byte)
        j += cuda.gridsize(1)


@cuda.jit
def _unpack_cuda(packed, scale, out):
    i = cuda.grid(1)
    while i < out.size:
        out[i] = scale if (packed[i // 8] >> (7 - i % 8)) & 1 else -scale
        i += cuda.gridsize(1)


# ---- the public functions -----------------------------------------------------------------
def sign_compress(x, residual, impl="auto"):
    """1-bit compression of x + residual with error feedback; returns (packed, scale).

    x, residual: float arrays of one shape and dtype (residual starts at zeros and is
    updated in place). packed: uint8 array of ceil(n/8) bytes (np.packbits order, bit 1 =
    +scale), on x's device; scale: a float (mean |x + residual|). Wire: n/8 + 4 bytes.
    """
    impl = C.resolve_impl(OP, impl, x=x, residual=residual)
    C.check_float(OP, "x", x)
    C.check_like(OP, "residual", residual, "x", x)
    if x.size == 0:
        raise ValueError(f"{OP}: x is empty (shape {tuple(x.shape)})")
    if impl == "reference":
        return sign_compress_reference(x, residual)
    C.check_contiguous(OP, impl, x=x, residual=residual)
    n, nbytes = x.size, (x.size + 7) // 8
    if impl == "numba":
        fx, fr = C.flat(x), C.flat(residual)
        scale = x.dtype.type(_abs_sum_numba(fx, fr) / n)
        packed = np.empty(nbytes, np.uint8)
        _pack_numba(fx, fr, scale, packed)
        return packed, float(scale)
    blocks = C.grid_for(n, max_blocks=1024)
    if impl == "cuda":
        cuda_ = C.cuda_module()
        dx, dr = C.to_cuda(x), C.to_cuda(residual)
        partials = cuda_.device_array(blocks, np.float64)
        _abs_sum_cuda[blocks, C.BLOCK](C.flat(dx), C.flat(dr), partials)
        scale = x.dtype.type(partials.copy_to_host().sum() / n)
        dp = cuda_.device_array(nbytes, np.uint8)
        _pack_cuda[C.grid_for(nbytes), C.BLOCK](C.flat(dx), C.flat(dr), scale, dp)
        C.from_cuda(dr, residual)
        return (dp.copy_to_host() if C.array_kind(x) == "numpy" else dp), float(scale)
    cp = C.import_cupy()
    dx, dr = C.to_cupy(x), C.to_cupy(residual)
    partials = cp.empty(blocks, cp.float64)
    sfx = C.suffix(x.dtype)
    C.cupy_kernel("sign_compress.cu", "abs_sum_" + sfx)((blocks,), (C.BLOCK,),
                                                         (dx, dr, partials, np.int64(n)))
    scale = x.dtype.type(float(partials.sum()) / n)
    dp = cp.empty(nbytes, cp.uint8)
    C.cupy_kernel("sign_compress.cu", "sign_pack_" + sfx)(
        (C.grid_for(nbytes),), (C.BLOCK,), (dx, dr, scale, dp, np.int64(n)))
    C.from_cupy(dr, residual)
    return (dp.get() if C.array_kind(x) == "numpy" else dp), float(scale)


def sign_decompress(packed, scale, shape, out=None, dtype=np.float32, impl="auto"):
    """+/-scale per bit; returns ``out`` (new, of ``shape`` and ``dtype``, when None)."""
    op = "sign_decompress"
    impl = C.resolve_impl(op, impl, packed=packed, out=out)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape))
    if np.dtype(packed.dtype) != np.uint8 or packed.size != (n + 7) // 8:
        raise ValueError(f"{op}: packed has {packed.size} {packed.dtype} values but "
                         f"shape {shape} needs {(n + 7) // 8} uint8 bytes; pass the array "
                         "sign_compress returned and x's shape")
    if out is not None:
        C.check_float(op, "out", out)
        if tuple(out.shape) != shape:
            raise ValueError(f"{op}: out has shape {tuple(out.shape)}, need {shape}")
        dtype = out.dtype
    dtype, kind = np.dtype(dtype), C.array_kind(packed)
    if impl == "reference":
        r = sign_decompress_reference(packed, scale, n, dtype).reshape(shape)
        if out is None:
            return r
        out[...] = r
        return out
    C.check_contiguous(op, impl, out=out)
    s = dtype.type(scale)
    if impl == "numba":
        out = np.empty(shape, dtype) if out is None else out
        _unpack_numba(packed, s, C.flat(out))
    elif impl == "cuda":
        dout = C.cuda_module().device_array(shape, dtype) if out is None else C.to_cuda(out)
        _unpack_cuda[C.grid_for(n), C.BLOCK](C.to_cuda(packed), s, C.flat(dout))
        if out is None:
            return dout.copy_to_host() if kind == "numpy" else dout
        C.from_cuda(dout, out)
    else:
        cp = C.import_cupy()
        dout = cp.empty(shape, dtype) if out is None else C.to_cupy(out)
        C.cupy_kernel("sign_compress.cu", "sign_unpack_" + C.suffix(dtype))(
            (C.grid_for(n),), (C.BLOCK,), (C.to_cupy(packed), s, dout, np.int64(n)))
        if out is None:
            return dout.get() if kind == "numpy" else dout
        C.from_cupy(dout, out)
    return out
