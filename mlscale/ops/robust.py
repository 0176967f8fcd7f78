"""Byzantine-robust aggregation over k client vectors: coordinate-wise median and
trimmed mean (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates").

For every coordinate i, sort the k values xs[:, i]; the median is the middle one (the
mean of the two middle ones for even k, as np.median), the trimmed mean drops the
``b`` largest and ``b`` smallest and averages the rest (in float64, cast back). Each
output element reads k inputs and writes one: 4(k+1) bytes per fp32 coordinate; the
sort costs O(k^2) compares in registers (insertion sort), so small k is memory-bound and
large k compute-bound. GPU kernels keep the k values in a per-thread buffer: k <= 64.
"""
from __future__ import annotations

import numpy as np
from numba import float64, njit, prange

from . import _common as C
from ._common import cuda

MAX_K_GPU = 64
CHUNK = 512


# ---- 1. references ----------------------------------------------------------------------
def coordinate_median_reference(xs):
    """np.median over the k clients (axis 0)."""
    return np.median(xs, axis=0)


def trimmed_mean_reference(xs, b):
    """Sort over clients, drop b from each end, average the rest (float64 sum)."""
    k = xs.shape[0]
    return np.sort(xs, axis=0)[b:k - b].mean(axis=0, dtype=np.float64).astype(xs.dtype)


# ---- 2. numba CPU: (k, n) -> (n,) --------------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _robust_numba(x, out, b, median):
    # per chunk of CHUNK coordinates: copy the (k, CHUNK) block, sort every column with an
    # odd-even transposition network (k rounds of branch-free compare-exchange, each a
    # loop over the chunk that vectorizes), then reduce the sorted rows
    k, n = x.shape
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, n)
        w = hi - lo
        buf = np.empty((k, CHUNK), np.float64)
        for j in range(k):
            for t in range(w):
                buf[j, t] = x[j, lo + t]
        for rnd in range(k):
            for j in range(rnd % 2, k - 1, 2):
                for t in range(w):
                    a, bb = buf[j, t], buf[j + 1, t]
                    buf[j, t] = a if a < bb else bb
                    buf[j + 1, t] = bb if a < bb else a
        h = k // 2
        if median:
            for t in range(w):
                out[lo + t] = buf[h, t] if k % 2 == 1 else (buf[h - 1, t] + buf[h, t]) * 0.5
        else:
            for t in range(w):
                s = 0.0
                for j in range(b, k - b):
                    s += buf[j, t]
                out[lo + t] = s / (k - 2 * b)


# ---- 3. numba-CUDA: one thread per coordinate ---------------------------------------------
@cuda.jit
def _robust_cuda(x, out, b, median):
    buf = cuda.local.array(MAX_K_GPU, float64)
    k = x.shape[0]
    i = cuda.grid(1)
    while i < out.size:
        for j in range(k):
            v = float64(x[j, i])
            t = j
            while t > 0 and buf[t - 1] > v:
                buf[t] = buf[t - 1]
                t -= 1
            buf[t] = v
        if median:
            h = k // 2
            out[i] = buf[h] if k % 2 == 1 else (buf[h - 1] + buf[h]) * 0.5
        else:
            s = 0.0
            for j in range(b, k - b):
                s += buf[j]
            out[i] = s / (k - 2 * b)
        i += cuda.gridsize(1)


# ---- dispatch -----------------------------------------------------------------------------
def _prepare(op, xs, out, impl):
    """(impl, stacked (k, ...) array or list, k, item shape, out)."""
    if isinstance(xs, (list, tuple)):
        if not xs:
            raise ValueError(f"{op}: xs is empty; pass k >= 1 client vectors")
        named = {f"xs[{j}]": x for j, x in enumerate(xs)}
        impl = C.resolve_impl(op, impl, out=out, **named)
        for name, x in named.items():
            C.check_float(op, name, x)
            C.check_like(op, name, x, "xs[0]", xs[0])
        k, item = len(xs), tuple(xs[0].shape)
    else:
        if getattr(xs, "ndim", 0) < 2:
            raise ValueError(f"{op}: xs must be a (k, n) array or a list of k arrays, got shape "
                             f"{tuple(getattr(xs, 'shape', ()))}")
        impl = C.resolve_impl(op, impl, xs=xs, out=out)
        C.check_float(op, "xs", xs)
        k, item = xs.shape[0], tuple(xs.shape[1:])
    return impl, k, item


def _run(op, xs, out, impl, b, median):
    impl, k, item = _prepare(op, xs, out, impl)
    dtype = xs[0].dtype
    kind = C.array_kind(xs[0])
    if impl == "reference" or kind == "numpy":
        stacked = np.stack(xs) if isinstance(xs, (list, tuple)) else xs
    else:
        stacked = xs
    if out is not None and (tuple(out.shape) != item or np.dtype(out.dtype) != np.dtype(dtype)):
        raise ValueError(f"{op}: out has shape {tuple(out.shape)} and dtype {out.dtype}; "
                         f"it must be {item} {dtype}")
    if impl == "reference":
        r = coordinate_median_reference(stacked) if median else trimmed_mean_reference(stacked, b)
        if out is None:
            return r
        out[...] = r
        return out
    if impl in ("cuda", "cupy") and k > MAX_K_GPU:
        raise ValueError(f"{op}: impl={impl!r} holds the k values of a coordinate in a per-thread "
                         f"buffer of {MAX_K_GPU}; got k={k} clients. Use impl='numba' or "
                         "'reference', or aggregate in groups")
    if out is None:
        out = np.empty(item, dtype) if kind == "numpy" else None
    if impl == "numba":
        C.check_contiguous(op, impl, xs=stacked, out=out)
        _robust_numba(stacked.reshape(k, -1), C.flat(out), b, median)
        return out
    if impl == "cuda":
        if isinstance(stacked, (list, tuple)):
            stacked = np.stack([C.to_cuda(x).copy_to_host() for x in stacked])
        C.check_contiguous(op, impl, xs=stacked)
        dx = C.to_cuda(stacked).reshape(k, -1)
        dout = C.to_cuda(out) if out is not None else C.cuda_module().device_array(item, dtype)
        n = int(np.prod(item))
        _robust_cuda[C.grid_for(n), C.BLOCK](dx, C.flat(dout), b, median)
        if out is None:
            return dout
        C.from_cuda(dout, out)
        return out
    cp = C.import_cupy()
    dx = cp.stack([C.to_cupy(x) for x in stacked]) if isinstance(stacked, (list, tuple)) \
        else C.to_cupy(stacked)
    dx = cp.ascontiguousarray(dx).reshape(k, -1)
    dout = cp.empty(dx.shape[1], dtype)
    fn = C.cupy_kernel("robust.cu", ("coordinate_median_" if median else "trimmed_mean_")
                       + C.suffix(dtype))
    fn((C.grid_for(dout.size),), (C.BLOCK,), (dx, dout, np.int32(k), np.int64(dout.size),
                                             np.int32(b)))
    dout = dout.reshape(item)
    if out is None:
        return dout if kind == "cupy" else dout.get()
    if C.array_kind(out) == "cupy":
        out[...] = dout
    else:
        out[...] = dout.get()
    return out


def coordinate_median(xs, out=None, impl="auto"):
    """Coordinate-wise median of k client vectors (Yin et al. 2018).

    xs: a (k, ...) array or a list of k equal-shape float arrays. Returns an array of one
    client's shape (out, when given). impl: 'auto', 'reference', 'numba', 'cuda', 'cupy';
    GPU impls take k <= 64.
    """
    return _run("coordinate_median", xs, out, impl, 0, True)


def trimmed_mean(xs, trim, out=None, impl="auto"):
    """Coordinate-wise trimmed mean of k client vectors (Yin et al. 2018).

    trim: an int b, the number of largest and of smallest values dropped per coordinate
    (2b < k), or a float fraction beta in [0, 0.5) giving b = floor(beta * k) (as
    scipy.stats.trim_mean). Other arguments as ``coordinate_median``.
    """
    k = len(xs) if isinstance(xs, (list, tuple)) else getattr(xs, "shape", (0,))[0]
    if isinstance(trim, (float, np.floating)):
        if not 0 <= trim < 0.5:
            raise ValueError(f"trimmed_mean: trim={trim} as a fraction must be in [0, 0.5)")
        b = int(trim * k)
    elif isinstance(trim, (int, np.integer)):
        b = int(trim)
    else:
        raise TypeError(f"trimmed_mean: trim={trim!r}; pass an int count or a float fraction")
    if b < 0 or 2 * b >= k:
        raise ValueError(f"trimmed_mean: trim={trim!r} drops {b} values from each end of k={k}; "
                         f"need 0 <= 2*b < k (at most b={(k - 1) // 2})")
    return _run("trimmed_mean", xs, out, impl, b, False)
