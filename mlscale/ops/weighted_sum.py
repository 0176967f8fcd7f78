"""Weighted sum of k arrays: out = sum_k weights[k] * xs[k].

The averaging step of FedAvg (McMahan et al. 2017: weights = n_k / n), model averaging
and local SGD, and gossip (one row of the mixing matrix, Lian et al. 2017). Fused, one
pass reads k arrays and writes one: (k + 1) arrays of traffic, 4(k+1) bytes per fp32
element for 2k flops: memory-bound. The NumPy reference makes 2k passes and k temporaries;
numba sums four inputs per pass (k reads and ceil(k/4) writes).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _common as C
from ._common import cuda

OP = "weighted_sum"


# ---- 1. reference ---------------------------------------------------------------------
def weighted_sum_reference(xs, weights, out=None):
    """sum_k weights[k] * xs[k] in the dtype of xs, summed in order k = 0, 1, ..."""
    w = np.asarray(weights, dtype=xs[0].dtype)
    acc = w[0] * xs[0]
    for j in range(1, len(xs)):
        acc = acc + w[j] * xs[j]
    if out is None:
        return acc
    out[...] = acc
    return out


# ---- 2. numba CPU: four arrays per pass -------------------------------------------------
@njit(parallel=True, cache=True, fastmath=False)
def _wsum4_numba(out, acc0, m, x0, w0, x1, w1, x2, w2, x3, w3):
    # out = (((acc + w0 x0) + w1 x1) + w2 x2) + w3 x3 for the first m of the four, where
    # acc is out (a later group) or 0 (the first): the reference's order, so the same
    # roundings. A flat loop body (no inner loop over k) is what LLVM vectorizes.
    for i in prange(out.size):
        acc = out[i] if acc0 else w0 - w0
        acc = acc + w0 * x0[i]
        if m > 1:
            acc = acc + w1 * x1[i]
        if m > 2:
            acc = acc + w2 * x2[i]
        if m > 3:
            acc = acc + w3 * x3[i]
        out[i] = acc


def _run_numba(rows, w, out):
    """Groups of four inputs: k reads, one write per group (k <= 4: the minimum traffic)."""
    for g in range(0, len(rows), 4):
        grp = rows[g:g + 4]
        m = len(grp)
        grp = grp + [grp[0]] * (4 - m)               # padding, never read (m says so)
        ws = [w[g + j] if j < m else w[g] for j in range(4)]
        _wsum4_numba(out, g > 0, m, grp[0], ws[0], grp[1], ws[1], grp[2], ws[2], grp[3], ws[3])


# ---- 3. numba-CUDA: one (k, n) device array --------------------------------------------
@cuda.jit
def _wsum_cuda(x, w, out):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    k = x.shape[0]
    while i < out.size:
        acc = w[0] * x[0, i]
        for j in range(1, k):
            acc += w[j] * x[j, i]
        out[i] = acc
        i += stride


def _run_cuda(xs, stacked, w, out):
    if stacked is not None:
        dx = C.to_cuda(stacked).reshape(stacked.shape[0], -1)
    elif all(C.array_kind(x) == "numpy" for x in xs):
        dx = C.to_cuda(np.stack([C.flat(x) for x in xs]))
    else:                                      # device arrays: gather rows on the device
        cuda = C.cuda_module()
        dx = cuda.device_array((len(xs), xs[0].size), dtype=xs[0].dtype)
        for j, x in enumerate(xs):
            dx[j].copy_to_device(C.flat(C.to_cuda(x)))
    dout = C.to_cuda(out)
    _wsum_cuda[C.grid_for(out.size), C.BLOCK](dx, C.to_cuda(w), C.flat(dout))
    C.from_cuda(dout, out)


# ---- 4. CuPy: kernels/weighted_sum.cu, an array of k row pointers (no stacking copy) ---
def _run_cupy(xs, w, out):
    cp = C.import_cupy()
    dxs = [C.to_cupy(x) for x in xs]
    ptrs = cp.asarray([x.data.ptr for x in dxs], dtype=cp.uint64)
    dout = C.to_cupy(out)
    k = C.cupy_kernel("weighted_sum.cu", "weighted_sum_" + C.suffix(out.dtype))
    k((C.grid_for(out.size),), (C.BLOCK,),
      (ptrs, cp.asarray(w), dout, np.int32(len(dxs)), np.int64(out.size)))
    C.from_cupy(dout, out)


# ---- the public function --------------------------------------------------------------
def weighted_sum(xs, weights, out=None, impl="auto"):
    """out = sum_k weights[k] * xs[k]; returns out (a new array when out is None).

    xs: a list of k arrays of one shape and float dtype, or one array of shape (k, ...)
    (k stacked arrays). weights: k numbers (cast to the dtype of xs). out: optional array
    of the shape of one xs[k] (it may be one of the xs). impl: 'auto', 'reference',
    'numba', 'cuda', 'cupy' (see mlscale.ops).
    """
    stacked = None
    if isinstance(xs, (list, tuple)):
        xs = list(xs)
        if not xs:
            raise ValueError(f"{OP}: xs is empty; pass at least one array")
    else:
        if getattr(xs, "ndim", 0) < 2:
            raise ValueError(f"{OP}: xs must be a list of arrays or one (k, n) array, got an "
                             f"array of shape {tuple(getattr(xs, 'shape', ()))}; wrap one array "
                             "as [x]")
        stacked, xs = xs, [xs[j] for j in range(xs.shape[0])]
    named = {f"xs[{j}]": x for j, x in enumerate(xs)}
    impl = C.resolve_impl(OP, impl, out=out, **named)
    C.check_float(OP, "xs[0]", xs[0])
    for name, x in named.items():
        C.check_like(OP, name, x, "xs[0]", xs[0])
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(xs),):
        raise ValueError(f"{OP}: weights has shape {w.shape} but there are {len(xs)} arrays in "
                         f"xs; pass one weight per array")
    w = w.astype(xs[0].dtype)
    if out is None:
        out = np.empty_like(xs[0]) if C.array_kind(xs[0]) == "numpy" else None
        if out is None:
            out = (C.import_cupy().empty_like(xs[0]) if C.array_kind(xs[0]) == "cupy"
                   else C.cuda_module().device_array_like(xs[0]))
    else:
        C.check_like(OP, "out", out, "xs[0]", xs[0])
    if impl == "reference":
        return weighted_sum_reference(xs, w, out)
    C.check_contiguous(OP, impl, out=out, xs=stacked, **({} if stacked is not None else named))
    if impl == "numba":
        rows = stacked.reshape(len(xs), -1) if stacked is not None else [C.flat(x) for x in xs]
        _run_numba([rows[j] for j in range(len(xs))], w, C.flat(out))
    elif impl == "cuda":
        _run_cuda(xs, stacked, w, out)
    else:
        _run_cupy(xs, w, out)
    return out
