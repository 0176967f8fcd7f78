"""``MetaArray``: an array with a shape and a dtype and no data (torch's ``meta`` device,
JAX's ``eval_shape``), whose every operation reports its FLOPs and bytes to a device.

    a = MetaArray((64, 128), np.float32, dev)     # usually made by dev.zeros(...) (device.py)
    (a @ dev.ones((128, 32))).shape               # (64, 32); dev.costs.flops["matmul"] += 2*64*128*32

Shapes and dtypes follow NumPy exactly: broadcasting by ``np.broadcast_shapes``, result
dtypes by the ufunc's own resolution (``ufunc.resolve_dtypes``, NEP 50 weak Python
scalars), reductions by calling NumPy on a one-element dummy, advanced (integer-array)
indexing by NumPy's rule (the broadcast index shape replaces the indexed axes in place
when they are adjacent, else goes first). Views and copies are NumPy's own decision: a
non-contiguous array keeps a zero-memory strided dummy (``as_strided`` over one element,
only ever viewed, never read) on which NumPy does transpose, basic indexing,
``broadcast_to`` and ``reshape(copy=False)``; a view shares its ``base`` and allocates
nothing, a copy allocates on the device.

Cost conventions (per op, charged by :meth:`mlscale.meta.Meta.charge`):
matmul ``(..., n, k) @ (..., k, m)``: ``2 n k m`` FLOPs per batch entry; an elementwise op:
one FLOP per output element; a reduction: one per input element. Bytes moved: every
input read once plus the output written once (an ideal kernel; no cache model).

Anything that needs values raises :class:`ShapeOnlyError` naming the operation:
``float(x)``, ``bool(x)`` (a comparison in an ``if``), ``x.item()``, ``np.asarray(x)``.
"""
import numpy as np

from .shapes import NO_DEVICE, ArrayBase, ShapeOnlyError, _is_index_array, _layout, _shape_of, index_shape
from .shapes import no_values, norm_axes, ufunc_dtypes  # noqa: F401 (ufunc_dtypes: re-exported)


class _Flags:
    __slots__ = ("c_contiguous",)

    def __init__(self, c):
        self.c_contiguous = c

    f_contiguous = property(lambda self: False)
    writeable = property(lambda self: True)
    owndata = property(lambda self: False)


class MetaArray(ArrayBase):
    """Shape and dtype, no data; ``dev`` (a :class:`mlscale.meta.Meta`) is charged for ops.

    ``base``: the array that owns the (notional) memory, None for an owner. An owner
    with a device counts its ``nbytes`` as live on that device from creation until it is
    garbage-collected (CPython frees it when the last reference goes, as a CUDA caching
    allocator would see it), tagged ``kind`` ("params", "grads", "optimizer", "activations")."""

    __slots__ = ("shape", "dtype", "base", "dev", "kind", "layout", "born", "__weakref__")
    __array_priority__ = 1000
    _shape_only = True
    __hash__ = None

    def __init__(self, shape, dtype, dev=None, base=None, kind=None, layout=None):
        if type(dtype) is type or isinstance(dtype, str):  # np.float32 or "float32" -> a dtype
            dtype = np.dtype(dtype)
        self.shape, self.dtype, self.base, self.dev, self.layout = tuple(shape), dtype, base, dev, layout
        self.kind, self.born = kind, -1
        if base is None and dev is not None:
            dev._alloc(self)

    def __del__(self):
        if self.base is None and self.dev is not None:
            self.dev._free(self)

    # -- attributes -------------------------------------------------------------------
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    @property
    def flags(self):
        return _Flags(self.layout is None)

    @property
    def contiguous(self):
        """C-contiguous (as NumPy's ``flags.c_contiguous``)."""
        return self.layout is None

    @property
    def strides(self):
        return _layout(self).strides

    @property
    def xp(self):
        return self.dev

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object (a 0-d shape-only array)")
        return self.shape[0]

    def __repr__(self):
        return f"MetaArray(shape={self.shape}, dtype={self.dtype.name})"

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # -- no values ---------------------------------------------------------------------
    def __bool__(self):
        no_values("bool(x) (a comparison or an array in an `if`/`while`)")

    def __float__(self):
        no_values("float(x)")

    def __int__(self):
        no_values("int(x)")

    def __index__(self):
        no_values("using x as an integer index")

    def __complex__(self):
        no_values("complex(x)")

    def item(self, *a):
        no_values("x.item()")

    def tolist(self):
        no_values("x.tolist()")

    def __array__(self, dtype=None, copy=None):
        no_values("np.asarray(x) (converting to a NumPy array)")

    def __contains__(self, v):
        no_values("`v in x`")

    def get(self):
        no_values("x.get() (copying to the host)")

    # -- views ---------------------------------------------------------------------------
    def _view(self, shape, layout=None):
        """A view (no memory); ``layout``: a zero-memory strided dummy, None when C-contiguous."""
        if layout is not None and layout.flags.c_contiguous:
            layout = None
        return MetaArray(shape, self.dtype, self.dev, self.base if self.base is not None else self, None, layout)

    def reshape(self, *shape, order="C", copy=None):
        if order != "C":
            raise ShapeOnlyError(f"mlscale.meta: reshape(order={order!r}) is not modelled; use C order")
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        size = self.size
        if -1 in shape:
            known = 1
            for s in shape:
                if s != -1:
                    known *= s
            if shape.count(-1) > 1 or known == 0 or size % known:
                raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
            shape = tuple(size // known if s == -1 else s for s in shape)
        else:
            n = 1
            for s in shape:
                n *= s
            if n != size:
                raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        if self.layout is None:
            return self._view(shape)
        try:  # NumPy's own answer on the strided dummy: a view if the strides allow one
            return self._view(shape, self.layout.reshape(shape, copy=False))
        except ValueError:
            pass
        # NumPy copies an array it cannot view (in C order, then views the copy as ``shape``)
        out = self.dev.new(self.shape, self.dtype)
        self.dev.charge("elementwise", 0, 2 * self.nbytes, self.dtype, "reshape (copy)")
        return out._view(shape)

    def ravel(self):
        return self.reshape(-1)

    def flatten(self):
        return self.copy().reshape(-1)

    def transpose(self, *axes):
        if not axes or axes == (None,):
            axes = tuple(range(self.ndim))[::-1]
        elif len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = tuple(axes[0])
        axes = norm_axes(tuple(axes), self.ndim, "transpose")
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} don't match an array of {self.ndim} dimensions")
        lay = _layout(self).transpose(axes)
        return self._view(lay.shape, lay)

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        a, b = norm_axes((a, b), self.ndim, "swapaxes")
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def squeeze(self, axis=None):
        lay = _layout(self).squeeze(axis)
        return self._view(lay.shape, lay)

    def view(self, dtype=None):
        if dtype is None:
            return self._view(self.shape, self.layout)
        dt = np.dtype(dtype)
        last = self.shape[-1] * self.dtype.itemsize // dt.itemsize if self.shape else 1
        return MetaArray(self.shape[:-1] + (last,), dt, self.dev, self.base if self.base is not None else self)

    # -- messages (the sim engine) -------------------------------------------------------
    def wire(self):
        """This array as a message on the wire: its shape and dtype (so its nbytes), no device."""
        return MetaArray(self.shape, self.dtype, NO_DEVICE)

    def arrive(self, dev):
        """A message received on ``dev``: a new buffer there (on no device if dev is None)."""
        if dev is None:
            return self if self.dev is NO_DEVICE else MetaArray(self.shape, self.dtype, NO_DEVICE)
        return MetaArray(self.shape, self.dtype, dev)

    # -- copies --------------------------------------------------------------------------
    def copy(self, order="C"):
        out = self.dev.new(self.shape, self.dtype, (self.base if self.base is not None else self).kind)
        if self.dev._fusion is not None:
            self.dev._touch((self,), (out,))
        self.dev.charge("elementwise", 0, 2 * self.nbytes, self.dtype, "copy")
        return out

    def astype(self, dtype, copy=True, order="K", casting="unsafe"):
        dt = np.dtype(dtype)
        if dt == self.dtype and not copy:
            return self
        out = self.dev.new(self.shape, dt, (self.base if self.base is not None else self).kind)  # kind kept
        if self.dev._fusion is not None:
            self.dev._touch((self,), (out,))
        self.dev.charge("elementwise", self.size, self.nbytes + out.nbytes, dt, "astype")
        return out

    def fill(self, value):
        self.dev.charge("elementwise", 0, self.nbytes, self.dtype, "fill")

    # -- indexing ----------------------------------------------------------------------
    def __getitem__(self, key):
        ks = key if isinstance(key, tuple) else (key,)
        if not any(_is_index_array(k) for k in ks):  # basic indexing: NumPy's view of the strided dummy
            lay = _layout(self)[key]
            return self._view(lay.shape, lay)
        shape = index_shape(self.shape, key)[0]
        out = self.dev.new(shape, self.dtype)
        if self.dev._fusion is not None:
            self.dev._touch((self,) + tuple(k for k in (key if isinstance(key, tuple) else (key,))), (out,))
        self.dev.charge("elementwise", 0, 2 * out.nbytes + _index_bytes(key), self.dtype, "gather")
        return out

    def __setitem__(self, key, value):
        shape, basic = index_shape(self.shape, key)
        vshape = _shape_of(value)
        v = vshape
        while len(v) > len(shape) and v[0] == 1:  # NumPy drops leading axes of length 1
            v = v[1:]
        try:
            if np.broadcast_shapes(v, shape) != shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"could not broadcast input array from shape {vshape} into shape {shape}") from None
        n = 1
        for s in shape:
            n *= s
        vb = value.nbytes if isinstance(value, (MetaArray, np.ndarray)) else 0
        if self.dev._fusion is not None:
            self.dev._touch((value,), (self[key] if basic else self,))
        self.dev.charge("elementwise", 0, vb + n * self.dtype.itemsize + (0 if basic else _index_bytes(key)),
                        self.dtype, "setitem")

    # -- NumPy protocols -----------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        dev = _device_of(inputs, kwargs.get("out"))
        if method == "__call__":
            if ufunc is np.matmul:
                return dev.matmul(*inputs, **kwargs)
            return dev.elementwise(ufunc, inputs, **kwargs)
        if method == "reduce":
            return dev.reduction(ufunc.__name__, inputs[0], **kwargs)
        if method == "at":
            return dev.scatter(ufunc, *inputs)
        raise ShapeOnlyError(f"mlscale.meta: np.{ufunc.__name__}.{method} is not supported on shape-only arrays")

    def __array_function__(self, func, types, args, kwargs):
        dev = _device_of(args, None)
        impl = getattr(dev, func.__name__, None)
        if impl is None or not callable(impl):
            raise ShapeOnlyError(f"mlscale.meta: np.{func.__name__} is not supported on shape-only arrays "
                                 f"(add it to mlscale/meta/device.py, or run with xp='numpy')")
        return impl(*args, **kwargs)

    # -- reductions as methods ---------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return self.dev.reduction("sum", self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return self.dev.reduction("mean", self, axis, dtype, out, keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=False):
        return self.dev.reduction("prod", self, axis, dtype, out, keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("max", self, axis, None, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("min", self, axis, None, out, keepdims)

    def argmax(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("argmax", self, axis, None, out, keepdims)

    def argmin(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("argmin", self, axis, None, out, keepdims)

    def var(self, axis=None, dtype=None, out=None, keepdims=False):
        return self.dev.reduction("var", self, axis, dtype, out, keepdims)

    def std(self, axis=None, dtype=None, out=None, keepdims=False):
        return self.dev.reduction("std", self, axis, dtype, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("any", self, axis, None, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return self.dev.reduction("all", self, axis, None, out, keepdims)


def _index_bytes(key):
    ks = key if isinstance(key, tuple) else (key,)
    return sum(k.nbytes for k in ks if isinstance(k, (MetaArray, np.ndarray)))


def _device_of(args, out):
    for a in args:
        if isinstance(a, MetaArray) and a.dev is not NO_DEVICE:
            return a.dev
        if isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, MetaArray) and b.dev is not NO_DEVICE:
                    return b.dev
    if isinstance(out, tuple):
        out = out[0] if out else None
    if isinstance(out, MetaArray) and out.dev is not NO_DEVICE:
        return out.dev
    return NO_DEVICE


def _dev2(a, b):
    """The device an op of a and b is charged to: a's, else b's (a message meets a local array)."""
    d = a.dev
    if d is NO_DEVICE and isinstance(b, MetaArray):
        return b.dev
    return d


def _binop(ufunc, reflected=False, inplace=False):
    if inplace:
        def f(self, other):
            _dev2(self, other).elementwise(ufunc, (self, other), out=self)
            return self
    elif reflected:
        def f(self, other):
            return _dev2(self, other).elementwise(ufunc, (other, self))
    else:
        def f(self, other):
            return _dev2(self, other).elementwise(ufunc, (self, other))
    return f


for _name, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                   ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power),
                   ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor)):
    setattr(MetaArray, f"__{_name}__", _binop(_uf))
    setattr(MetaArray, f"__r{_name}__", _binop(_uf, reflected=True))
    setattr(MetaArray, f"__i{_name}__", _binop(_uf, inplace=True))
for _name, _uf in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
                   ("eq", np.equal), ("ne", np.not_equal)):
    setattr(MetaArray, f"__{_name}__", _binop(_uf))
MetaArray.__neg__ = lambda self: self.dev.elementwise(np.negative, (self,))
MetaArray.__pos__ = lambda self: self.dev.elementwise(np.positive, (self,))
MetaArray.__abs__ = lambda self: self.dev.elementwise(np.absolute, (self,))
MetaArray.__invert__ = lambda self: self.dev.elementwise(np.invert, (self,))
MetaArray.__matmul__ = lambda self, o: _dev2(self, o).matmul(self, o)
MetaArray.__rmatmul__ = lambda self, o: _dev2(self, o).matmul(o, self)


def _imatmul(self, o):
    self.dev.matmul(self, o, out=self)
    return self


MetaArray.__imatmul__ = _imatmul

__all__ = ["MetaArray", "ShapeOnlyError", "NO_DEVICE", "index_shape", "ufunc_dtypes"]
