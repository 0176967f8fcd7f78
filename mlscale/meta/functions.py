"""NumPy's functions on shape-only arrays (a mixin of :class:`mlscale.meta.Meta`):
making arrays (zeros, ones, full, arange, asarray, random), shape functions (reshape,
concatenate, stack, split, where, broadcast_to) and reductions called as functions.
Each charges its bytes (a write per element made, reads and writes per copy).
"""
import numpy as np

from .array import MetaArray
from .shapes import ShapeOnlyError, _layout, norm_axes


class MetaRNG:
    """``xp.random.default_rng(seed)``: draws shape-only arrays (a write per element)."""

    def __init__(self, dev):
        self.dev = dev

    def _draw(self, size, dtype=np.float64):
        shape = () if size is None else (tuple(size) if isinstance(size, (tuple, list)) else (int(size),))
        out = self.dev.new(shape, np.dtype(dtype))
        self.dev.charge("elementwise", out.size, out.nbytes, out.dtype, "random")
        return out

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=np.float64):
        return self._draw(size, dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._draw(size, dtype)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw(size)

    def random(self, size=None, dtype=np.float64):
        return self._draw(size, dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._draw(size, dtype)


class _Random:
    def __init__(self, dev):
        self.dev = dev

    def default_rng(self, seed=None):
        return MetaRNG(self.dev)


class _WhereUfunc:
    """np.where(cond, x, y) is not a ufunc; this stands for it in ``elementwise``."""
    __name__ = "where"
    nin, nout = 3, 1


_WHERE = _WhereUfunc()


class NumpyFunctions:
    """NumPy's module-level functions, for ``Meta`` (which provides ``new``, ``charge``,
    ``elementwise`` and ``reduction``)."""

    # -- making arrays -------------------------------------------------------------------
    def new(self, shape, dtype, kind=None):
        return MetaArray(shape, dtype, self, None, kind)

    def _creation(self, shape, dtype, kind, write, op):
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        out = MetaArray(shape, np.dtype(float if dtype is None else dtype), self, None, kind)
        if write:
            self.charge("elementwise", 0, out.nbytes, out.dtype, op)
        return out

    def empty(self, shape, dtype=float, kind=None, order="C"):
        return self._creation(shape, dtype, kind, False, "empty")

    def zeros(self, shape, dtype=float, kind=None, order="C"):
        return self._creation(shape, dtype, kind, True, "zeros")

    def ones(self, shape, dtype=float, kind=None, order="C"):
        return self._creation(shape, dtype, kind, True, "ones")

    def full(self, shape, fill_value, dtype=None, kind=None, order="C"):
        dt = np.asarray(fill_value).dtype if dtype is None else dtype
        return self._creation(shape, dt, kind, True, "full")

    def empty_like(self, a, dtype=None, kind=None, shape=None):
        return self.empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, kind)

    def zeros_like(self, a, dtype=None, kind=None, shape=None):
        return self.zeros(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, kind)

    def ones_like(self, a, dtype=None, kind=None, shape=None):
        return self.ones(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, kind)

    def full_like(self, a, fill_value, dtype=None, kind=None, shape=None):
        return self.full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype, kind)

    def arange(self, start, stop=None, step=1, dtype=None):
        if stop is None:
            start, stop = 0, start
        n = max(int(np.ceil((stop - start) / step)), 0)
        dt = np.arange(start, start + step, step, dtype=dtype).dtype  # NumPy's dtype for these arguments
        return self._creation((n,), dt, None, True, "arange")

    def asarray(self, a, dtype=None, kind=None):
        """A shape-only array of ``a``'s shape and dtype (a MetaArray of this device: itself)."""
        if isinstance(a, MetaArray):
            if a.dev is self:
                return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
            return self.new(a.shape, a.dtype if dtype is None else np.dtype(dtype), kind)
        src = np.asarray(a) if not hasattr(a, "shape") else a
        return self._creation(tuple(src.shape), src.dtype if dtype is None else dtype, kind, True, "asarray")

    array = asarray

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, MetaArray) and a.layout is None and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return self.asarray(a).copy() if isinstance(a, MetaArray) else self.asarray(a, dtype)

    def copy(self, a):
        return a.copy()

    def tril(self, a, k=0):
        return a.copy()

    triu = tril

    def broadcast_to(self, a, shape):
        lay = np.broadcast_to(_layout(a), tuple(shape))
        return a._view(lay.shape, lay)

    # -- shape functions ---------------------------------------------------------------
    def shape(self, a):
        return a.shape

    def ndim(self, a):
        return len(a.shape)

    def size(self, a, axis=None):
        return a.size if axis is None else a.shape[axis]

    def reshape(self, a, shape, order="C"):
        return a.reshape(shape)

    def transpose(self, a, axes=None):
        return a.transpose(axes) if axes is not None else a.transpose()

    def swapaxes(self, a, i, j):
        return a.swapaxes(i, j)

    def ravel(self, a):
        return a.ravel()

    def squeeze(self, a, axis=None):
        return a.squeeze(axis)

    def expand_dims(self, a, axis):
        nd = a.ndim + (len(axis) if isinstance(axis, tuple) else 1)
        axes = norm_axes(axis, nd, "expand_dims")
        it = iter(a.shape)
        return a.reshape(tuple(1 if i in axes else next(it) for i in range(nd)))

    def concatenate(self, arrays, axis=0, out=None, dtype=None):
        arrays = list(arrays)
        if not arrays:
            raise ValueError("need at least one array to concatenate")
        if axis is None:
            arrays, axis = [a.reshape(-1) for a in arrays], 0
        nd = len(arrays[0].shape)
        ax = norm_axes(axis, nd, "concatenate")[0]
        for a in arrays:
            if len(a.shape) != nd or any(s != t for i, (s, t) in enumerate(zip(a.shape, arrays[0].shape)) if i != ax):
                raise ValueError(f"concatenate: all the input array dimensions except for axis {ax} must match, "
                                 f"got shapes {[tuple(b.shape) for b in arrays]}")
        shape = list(arrays[0].shape)
        shape[ax] = sum(a.shape[ax] for a in arrays)
        dt = np.result_type(*[a.dtype for a in arrays]) if dtype is None else np.dtype(dtype)
        res = self.new(tuple(shape), dt)
        if self._fusion is not None:
            self._touch(arrays, (res,))
        self.charge("elementwise", 0, sum(a.nbytes for a in arrays) + res.nbytes, dt, "concatenate")
        return res

    def stack(self, arrays, axis=0, out=None, dtype=None):
        arrays = list(arrays)
        if not arrays:
            raise ValueError("need at least one array to stack")
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"stack: all input arrays must have the same shape, got {[a.shape for a in arrays]}")
        ax = norm_axes(axis, arrays[0].ndim + 1, "stack")[0]
        return self.concatenate([self.expand_dims(a, ax) for a in arrays], axis=ax, dtype=dtype)

    def split(self, a, indices_or_sections, axis=0):
        return self._split(a, indices_or_sections, axis, strict=True)

    def array_split(self, a, indices_or_sections, axis=0):
        return self._split(a, indices_or_sections, axis, strict=False)

    def _split(self, a, sections, axis, strict):
        ax = norm_axes(axis, a.ndim, "split")[0]
        n = a.shape[ax]
        if isinstance(sections, (int, np.integer)):
            k = int(sections)
            if strict and n % k:
                raise ValueError("array split does not result in an equal division")
            q, r = divmod(n, k)
            bounds = np.cumsum([0] + [q + 1] * r + [q] * (k - r)).tolist()
        else:
            bounds = [0] + [min(int(i), n) for i in sections] + [n]
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            key = (slice(None),) * ax + (slice(lo, max(lo, hi)),)
            out.append(a[key])
        return out

    def where(self, cond, x=None, y=None):
        if x is None:
            raise ShapeOnlyError("shape-only arrays have no values: np.where(cond) (the indices of True) has a "
                                 "shape that depends on the data")
        return self.elementwise(_WHERE, (cond, x, y))

    def copyto(self, dst, src, casting="same_kind", where=True):
        dst[...] = src

    # reductions and math as functions
    def sum(self, a, axis=None, dtype=None, out=None, keepdims=False):
        return self.reduction("sum", a, axis, dtype, out, keepdims)

    def mean(self, a, axis=None, dtype=None, out=None, keepdims=False):
        return self.reduction("mean", a, axis, dtype, out, keepdims)

    def max(self, a, axis=None, out=None, keepdims=False):
        return self.reduction("max", a, axis, None, out, keepdims)

    def min(self, a, axis=None, out=None, keepdims=False):
        return self.reduction("min", a, axis, None, out, keepdims)

    amax, amin = max, min

    def prod(self, a, axis=None, dtype=None, out=None, keepdims=False):
        return self.reduction("prod", a, axis, dtype, out, keepdims)

    def argmax(self, a, axis=None, out=None, keepdims=False):
        return self.reduction("argmax", a, axis, None, out, keepdims)

    def var(self, a, axis=None, dtype=None, out=None, keepdims=False):
        return self.reduction("var", a, axis, dtype, out, keepdims)

    def std(self, a, axis=None, dtype=None, out=None, keepdims=False):
        return self.reduction("std", a, axis, dtype, out, keepdims)

    def round(self, a, decimals=0):
        return self.elementwise(np.rint, (a,))

    def dot(self, a, b):
        return self.matmul(a, b)

    def allclose(self, *a, **k):
        raise ShapeOnlyError("shape-only arrays have no values: allclose compares values")

    def array_equal(self, *a, **k):
        raise ShapeOnlyError("shape-only arrays have no values: array_equal compares values")

    def result_type(self, *args):
        return np.result_type(*[a.dtype if isinstance(a, MetaArray) else a for a in args])

    def may_share_memory(self, a, b, max_work=None):
        ra = a.base if getattr(a, "base", None) is not None else a
        rb = b.base if getattr(b, "base", None) is not None else b
        return ra is rb

    shares_memory = may_share_memory


__all__ = ["NumpyFunctions", "MetaRNG"]
