"""The shape rules of mlscale.meta, NumPy's own: result dtypes of ufuncs and reductions,
axes, basic and advanced indexing, and the zero-memory strided dummies that let NumPy
decide views and copies. Also the error raised when values are needed, and NO_DEVICE.
"""
import numpy as np

_SCALARS = (int, float, complex, bool)


class ShapeOnlyError(TypeError):
    """An operation needed the values of a shape-only array."""


def no_values(op):
    raise ShapeOnlyError(f"shape-only arrays have no values: {op} needs the data. Run this part with "
                         f"xp='numpy' on a small size, or keep it out of the shape-only program "
                         f"(mlscale.meta computes shapes, FLOPs, bytes and time only)")


class _NoDevice:
    """The device of a message on the wire (and of one received on a rank with no Meta):
    it holds no memory, and any op on it says how to give the rank a device."""

    shape_only = False

    def _alloc(self, a):
        pass

    def _free(self, a):
        pass

    def __getattr__(self, name):
        raise ShapeOnlyError("mlscale.meta: an op on shape-only arrays that belong to no device (a message "
                             "received on a rank without a Meta): make each rank's module with "
                             "Meta(hardware, comm=comm)")

    def __repr__(self):
        return "NO_DEVICE"


NO_DEVICE = _NoDevice()




class ArrayBase:
    """What mlscale.meta's shape rules recognise as a shape-only array (MetaArray derives from it)."""

    __slots__ = ()


def _shape_of(x):
    if isinstance(x, (ArrayBase, np.ndarray)):
        return x.shape
    return ()


def _dtype_key(x):
    if isinstance(x, (ArrayBase, np.ndarray, np.generic)):
        return x.dtype
    if isinstance(x, _SCALARS):
        return type(x)
    return np.asarray(x).dtype


_UFUNC_DTYPES = {}


def ufunc_dtypes(ufunc, inputs, out_dtype=None):
    """Output dtypes of ``ufunc`` on these inputs (cached), as NumPy resolves them."""
    keys = tuple(_dtype_key(x) for x in inputs)
    k = (ufunc, keys, out_dtype)
    r = _UFUNC_DTYPES.get(k)
    if r is None:
        try:
            r = ufunc.resolve_dtypes(keys + (out_dtype,) * ufunc.nout)[ufunc.nin:]
        except Exception as e:  # casting errors: say which op
            raise TypeError(f"mlscale.meta: np.{ufunc.__name__} of dtypes {keys}: {e}") from None
        _UFUNC_DTYPES[k] = r
    return r


_REDUCE_DTYPES = {}


def reduce_dtype(name, dtype, dt=None):
    k = (name, dtype, dt)
    r = _REDUCE_DTYPES.get(k)
    if r is None:
        f = getattr(np, name)
        args = {} if dt is None else {"dtype": dt}
        r = _REDUCE_DTYPES[k] = f(np.ones(1, dtype), **args).dtype
    return r


def norm_axes(axis, ndim, op):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(f"{op}: axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    return tuple(out)


def _is_index_array(k):
    return isinstance(k, (ArrayBase, np.ndarray, list))


_BASIC_CACHE = {}
_LAYOUTS = {}
_BUF = {}


def _layout(a):
    """A zero-memory ndarray with ``a``'s shape and NumPy's strides (``as_strided`` over one
    element: only view operations ever touch it, so NumPy decides views and copies exactly)."""
    if a.layout is not None:
        return a.layout
    k = (a.shape, a.dtype)
    lay = _LAYOUTS.get(k)
    if lay is None:
        buf = _BUF.get(a.dtype)
        if buf is None:
            buf = _BUF[a.dtype] = np.empty(1, a.dtype)
        strides, acc = [], a.dtype.itemsize
        for n in reversed(a.shape):
            strides.append(acc)
            acc *= max(n, 1)
        lay = np.lib.stride_tricks.as_strided(buf, a.shape, tuple(reversed(strides)), writeable=False)
        if len(_LAYOUTS) > 8192:
            _LAYOUTS.clear()
        _LAYOUTS[k] = lay
    return lay


def index_shape(shape, key):
    """``(result shape, is_basic)`` of ``a[key]`` for an array of ``shape``, by NumPy's rules."""
    ks = key if isinstance(key, tuple) else (key,)
    if not any(_is_index_array(k) for k in ks):  # basic indexing: on a zero-strided dummy
        ck = None
        try:
            ck = (shape, ks)
            hit = _BASIC_CACHE.get(ck)
        except TypeError:  # unhashable (slices are hashable from Python 3.12 on)
            hit, ck = None, None
        if hit is not None:
            return hit
        r = (np.broadcast_to(np.empty((), np.uint8), shape)[key].shape, True)
        if ck is not None and len(_BASIC_CACHE) < 4096:
            _BASIC_CACHE[ck] = r
        return r
    for k in ks:
        if getattr(k, "dtype", None) is not None and k.dtype == bool:
            if isinstance(k, ArrayBase):
                raise ShapeOnlyError("shape-only arrays have no values: a boolean mask index gives a shape that "
                                     "depends on the data; use xp.where(mask, a, b) instead")
        elif isinstance(k, ArrayBase) and k.dtype.kind not in "iu":
            raise IndexError(f"arrays used as indices must be of integer type, got {k.dtype}")
    # expand bool numpy masks and lists into integer arrays, Ellipsis into slices
    items = []
    for k in ks:
        if isinstance(k, list):
            k = np.asarray(k)
        if isinstance(k, np.ndarray) and k.dtype == bool:
            items.extend(np.nonzero(k))
        else:
            items.append(k)
    nidx = sum(1 for k in items if k is not None and k is not Ellipsis)
    if Ellipsis in [k for k in items if not _is_index_array(k)]:
        i = next(j for j, k in enumerate(items) if not _is_index_array(k) and k is Ellipsis)
        items[i:i + 1] = [slice(None)] * (len(shape) - nidx + 1)
    adv = [i for i, k in enumerate(items) if _is_index_array(k) or isinstance(k, (int, np.integer))]
    bshape = np.broadcast_shapes(*[_shape_of(items[i]) for i in adv])
    basic_key = tuple(0 if i in adv else k for i, k in enumerate(items))
    rest = np.broadcast_to(np.empty((), np.uint8), shape)[basic_key].shape
    if adv == list(range(adv[0], adv[-1] + 1)):  # adjacent: in place of the first
        pos = sum(1 for k in items[:adv[0]] if k is None or isinstance(k, slice))
    else:
        pos = 0
    return rest[:pos] + tuple(bshape) + rest[pos:], False


__all__ = ["ShapeOnlyError", "no_values", "NO_DEVICE", "ArrayBase", "ufunc_dtypes", "reduce_dtype", "norm_axes",
           "index_shape"]
