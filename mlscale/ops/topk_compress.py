"""Top-k sparsification with error feedback (Stich, Cordonnier, Jaggi 2018, "Sparsified
SGD with memory"; Lin et al. 2018, Deep Gradient Compression).

    c = x + residual;  idx = the k largest |c_i| (ties: lowest index first), sorted
    send (idx, c[idx]);  residual = c with c[idx] = 0     (in place)

On the wire: k int32 indices and k values: k * (4 + itemsize) bytes (8k for fp32),
against 4n dense; worth it while k < n/2. Traffic: 12 B per fp32 element to form c and
|c| (read x, r; write r... and |c|), the selection reads |c| a few more times (numba:
one partition copy and a scan; numba-CUDA: 4 radix passes of 8 bits over the float's bit
pattern, as non-negative floats order like their bits, then an ordered stream
compaction), plus k gathers. Memory-bound, with several passes.
"""
from __future__ import annotations

import numpy as np
from numba import int32, njit, prange

from . import _common as C
from ._common import cuda

OP = "topk_compress"
_BYTE = np.uint64(255)
_KEY = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


# ---- 1. reference -------------------------------------------------------------------------
def topk_compress_reference(x, k, residual):
    c = x.reshape(-1) + residual.reshape(-1)
    idx = np.sort(np.argsort(-np.abs(c), kind="stable")[:k]).astype(np.int32)
    values = c[idx]
    c[idx] = 0
    residual[...] = c.reshape(residual.shape)
    return idx, values


def topk_decompress_reference(indices, values, n, dtype=np.float32):
    out = np.zeros(n, dtype)
    out[indices] = values
    return out


# ---- 2. numba CPU -------------------------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _prepare_numba(x, r, absc):
    for i in prange(x.size):
        c = x[i] + r[i]
        r[i] = c
        absc[i] = abs(c)


@njit(cache=True)
def _select_numba(absc, k):
    n = absc.size
    thr = np.partition(absc, n - k)[n - k]          # the k-th largest |c|
    gt = 0
    for i in range(n):
        if absc[i] > thr:
            gt += 1
    ties = k - gt                                     # how many == thr to take, lowest first
    idx = np.empty(k, np.int32)
    j = 0
    for i in range(n):
        a = absc[i]
        if a > thr or (a == thr and ties > 0):
            if a == thr:
                ties -= 1
            idx[j] = i
            j += 1
    return idx


@njit(parallel=True, cache=True, fastmath=False)
def _gather_zero_numba(r, idx, values):
    for j in prange(idx.size):
        values[j] = r[idx[j]]
        r[idx[j]] = 0


@njit(parallel=True, cache=True, fastmath=False)
def _scatter_numba(idx, values, out, accumulate):
    if not accumulate:
        for i in prange(out.size):
            out[i] = 0
    for j in prange(idx.size):
        if accumulate:
            out[idx[j]] += values[j]
        else:
            out[idx[j]] = values[j]


# ---- 3. numba-CUDA: radix select + ordered stream compaction -------------------------------
@cuda.jit
def _prepare_cuda(x, r, absc):
    i = cuda.grid(1)
    while i < x.size:
        c = x[i] + r[i]
        r[i] = c
        absc[i] = abs(c)
        i += cuda.gridsize(1)


@cuda.jit
def _hist_cuda(keys, shift, prefix, mask, hist):
    # count the keys that match the digits fixed so far, by their next 8-bit digit
    i = cuda.grid(1)
    while i < keys.size:
        key = np.uint64(keys[i])
        if key & mask == prefix:
            cuda.atomic.add(hist, (key >> shift) & _BYTE, 1)
        i += cuda.gridsize(1)


@cuda.jit(device=True)
def _flag(keys, i, thr, m, tierank, mode):
    if i >= keys.size:
        return 0
    key = np.uint64(keys[i])
    if mode == 0:                       # ties with the threshold
        return 1 if key == thr else 0
    if mode == 1:                       # above it, or one of the m lowest-index ties
        return 1 if key > thr or (key == thr and tierank[i] < m) else 0
    return 1 if key >= thr else 0       # mode 2: all ties are taken


@cuda.jit
def _flag_count_cuda(keys, thr, m, tierank, mode, counts):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    c = cuda.syncthreads_count(_flag(keys, i, thr, m, tierank, mode))
    if cuda.threadIdx.x == 0:
        counts[cuda.blockIdx.x] = c


@cuda.jit
def _flag_scatter_cuda(keys, thr, m, tierank, mode, offsets, out):
    # block-wide inclusive scan (Hillis-Steele) of the flags: element order is kept
    sh = cuda.shared.array(C.BLOCK, int32)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + tid
    f = _flag(keys, i, thr, m, tierank, mode)
    sh[tid] = f
    cuda.syncthreads()
    off = 1
    while off < C.BLOCK:
        v = sh[tid - off] if tid >= off else 0
        cuda.syncthreads()
        sh[tid] += v
        cuda.syncthreads()
        off *= 2
    if f:
        pos = offsets[cuda.blockIdx.x] + sh[tid] - 1
        if mode == 0:
            out[i] = pos                # rank among the ties
        else:
            out[pos] = i                # the selected index, in ascending order


@cuda.jit
def _gather_zero_cuda(r, idx, values):
    j = cuda.grid(1)
    while j < idx.size:
        values[j] = r[idx[j]]
        r[idx[j]] = 0
        j += cuda.gridsize(1)


@cuda.jit
def _scatter_cuda(idx, values, out, accumulate):
    j = cuda.grid(1)
    while j < idx.size:
        if accumulate:
            out[idx[j]] += values[j]
        else:
            out[idx[j]] = values[j]
        j += cuda.gridsize(1)


def _radix_threshold(keys, k, nbits):
    """The k-th largest key, by 8-bit digits from the top, and how many ties to take."""
    cuda_ = C.cuda_module()
    prefix, mask, remaining, last = 0, 0, k, 0
    for shift in range(nbits - 8, -1, -8):
        hist = cuda_.to_device(np.zeros(256, np.int64))
        _hist_cuda[C.grid_for(keys.size, max_blocks=1024), C.BLOCK](
            keys, np.uint64(shift), np.uint64(prefix), np.uint64(mask), hist)
        h = hist.copy_to_host()
        d, above = 255, 0
        while above + h[d] < remaining:     # digits above d are all in the top k
            above += h[d]
            d -= 1
        remaining -= above
        prefix |= d << shift
        mask |= 0xFF << shift
        last = int(h[d])                    # keys equal to the threshold so far
    return np.uint64(prefix), remaining, last


def _compact(keys, thr, m, tierank, mode, out):
    cuda_ = C.cuda_module()
    blocks = C.grid_for(keys.size, max_blocks=2**31 - 1)
    counts = cuda_.device_array(blocks, np.int64)
    _flag_count_cuda[blocks, C.BLOCK](keys, thr, m, tierank, mode, counts)
    offsets = np.concatenate(([0], np.cumsum(counts.copy_to_host())[:-1])).astype(np.int64)
    _flag_scatter_cuda[blocks, C.BLOCK](keys, thr, m, tierank, mode, cuda_.to_device(offsets), out)


def _topk_cuda(x, k, residual):
    cuda_ = C.cuda_module()
    dx, dr = C.to_cuda(x), C.to_cuda(residual)
    fx, fr = C.flat(dx), C.flat(dr)
    n = fx.size
    absc = cuda_.device_array(n, x.dtype)
    _prepare_cuda[C.grid_for(n), C.BLOCK](fx, fr, absc)
    keys = absc.view(_KEY[np.dtype(x.dtype)])
    thr, m, ties = _radix_threshold(keys, k, 8 * np.dtype(x.dtype).itemsize)
    tierank = cuda_.device_array(n, np.int64)
    if m < ties:                                  # only some ties: rank them by index
        _compact(keys, thr, m, tierank, 0, tierank)
    idx = cuda_.device_array(k, np.int32)
    _compact(keys, thr, m, tierank, 1 if m < ties else 2, idx)
    values = cuda_.device_array(k, x.dtype)
    _gather_zero_cuda[C.grid_for(k), C.BLOCK](fr, idx, values)
    C.from_cuda(dr, residual)
    if C.array_kind(x) == "numpy":
        return idx.copy_to_host(), values.copy_to_host()
    return idx, values


# ---- 4. CuPy: kernels/topk_compress.cu for the passes, cupy.partition for the selection ------
def _topk_cupy(x, k, residual):
    cp = C.import_cupy()
    dx, dr = C.to_cupy(x), C.to_cupy(residual)
    n, sfx = x.size, C.suffix(x.dtype)
    absc = cp.empty(n, x.dtype)
    C.cupy_kernel("topk_compress.cu", "topk_prepare_" + sfx)(
        (C.grid_for(n),), (C.BLOCK,), (dx, dr, absc, np.int64(n)))
    thr = cp.partition(absc, n - k)[n - k]
    gt = cp.flatnonzero(absc > thr)
    ties = cp.flatnonzero(absc == thr)[: k - gt.size]
    idx = cp.sort(cp.concatenate([gt, ties])).astype(cp.int32)
    values = cp.empty(k, x.dtype)
    C.cupy_kernel("topk_compress.cu", "topk_gather_zero_" + sfx)(
        (C.grid_for(k),), (C.BLOCK,), (dr, idx, values, np.int64(k)))
    C.from_cupy(dr, residual)
    if C.array_kind(x) == "numpy":
        return idx.get(), values.get()
    return idx, values


# ---- the public functions -----------------------------------------------------------------
def topk_compress(x, k, residual, impl="auto"):
    """Keep the k largest |x + residual| (error feedback); returns (indices, values).

    x, residual: float arrays of one shape and dtype (residual starts at zeros; updated in
    place to what was not sent). k: 1 <= k <= x.size. indices: int32, ascending, into the
    flattened x; values: x's dtype; both on x's device. Wire: k * (4 + itemsize) bytes.
    """
    impl = C.resolve_impl(OP, impl, x=x, residual=residual)
    C.check_float(OP, "x", x)
    C.check_like(OP, "residual", residual, "x", x)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= x.size:
        raise ValueError(f"{OP}: k={k!r} must be an int in [1, x.size={x.size}]")
    if x.size >= 2**31:
        raise ValueError(f"{OP}: x has {x.size} elements; int32 indices need < 2**31, split it")
    if impl == "reference":
        return topk_compress_reference(x, int(k), residual)
    C.check_contiguous(OP, impl, x=x, residual=residual)
    if impl == "numba":
        fr = C.flat(residual)
        absc = np.empty(x.size, x.dtype)
        _prepare_numba(C.flat(x), fr, absc)
        idx = _select_numba(absc, int(k))
        values = np.empty(int(k), x.dtype)
        _gather_zero_numba(fr, idx, values)
        return idx, values
    if impl == "cuda":
        return _topk_cuda(x, int(k), residual)
    return _topk_cupy(x, int(k), residual)


def topk_decompress(indices, values, shape, out=None, accumulate=False, impl="auto"):
    """Dense array of ``shape`` with values at indices (flat), zeros elsewhere.

    out: optional array to fill (values' dtype); accumulate=True adds into out instead of
    zeroing it first (summing several workers' sparse updates). Returns out.
    """
    op = "topk_decompress"
    impl = C.resolve_impl(op, impl, indices=indices, values=values, out=out)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape))
    if tuple(indices.shape) != tuple(values.shape) or indices.ndim != 1:
        raise ValueError(f"{op}: indices {tuple(indices.shape)} and values {tuple(values.shape)} "
                         "must be 1-D of one length (as topk_compress returns them)")
    C.check_float(op, "values", values)
    if not np.issubdtype(np.dtype(indices.dtype), np.integer):
        raise TypeError(f"{op}: indices has dtype {indices.dtype}; pass integer indices")
    if indices.size:                      # an index out of range would write anywhere
        host = indices.copy_to_host() if C.array_kind(indices) == "cuda" else indices
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{op}: indices span [{lo}, {hi}] but shape {shape} has {n} "
                             "elements; pass the indices topk_compress returned for this shape")
    if impl in ("cuda", "cupy") and np.dtype(indices.dtype) != np.int32:
        indices = indices.astype(np.int32)     # the kernels read int32
    if out is None:
        if accumulate:
            raise ValueError(f"{op}: accumulate=True needs an out array to add into")
        kind = C.array_kind(values)
        out = (np.empty(shape, values.dtype) if kind == "numpy" else
               C.import_cupy().empty(shape, values.dtype) if kind == "cupy" else
               C.cuda_module().device_array(shape, values.dtype))
    elif tuple(out.shape) != shape or np.dtype(out.dtype) != np.dtype(values.dtype):
        raise ValueError(f"{op}: out has shape {tuple(out.shape)} dtype {out.dtype}; need "
                         f"{shape} {values.dtype}")
    if impl == "reference":
        dense = topk_decompress_reference(indices, values, n, values.dtype).reshape(shape)
        out[...] = out + dense if accumulate else dense
        return out
    C.check_contiguous(op, impl, out=out)
    if impl == "numba":
        _scatter_numba(indices, values, C.flat(out), accumulate)
    elif impl == "cuda":
        dout = C.to_cuda(out)
        if not accumulate:
            from .qsgd import _zero_cuda
            _zero_cuda[C.grid_for(n), C.BLOCK](C.flat(dout))
        _scatter_cuda[C.grid_for(indices.size), C.BLOCK](
            C.to_cuda(indices), C.to_cuda(values), C.flat(dout), accumulate)
        C.from_cuda(dout, out)
    else:
        dout = C.to_cupy(out)
        if not accumulate:
            dout.fill(0)
        C.cupy_kernel("topk_compress.cu", "topk_scatter_" + C.suffix(values.dtype))(
            (C.grid_for(indices.size),), (C.BLOCK,),
            (C.to_cupy(indices), C.to_cupy(values), dout.reshape(-1), np.int64(indices.size),
             np.int32(accumulate)))
        C.from_cupy(dout, out)
    return out
