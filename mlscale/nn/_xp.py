"""Which array library an array belongs to (NumPy or CuPy), without importing CuPy.

The CuPy idiom ``xp = cupy.get_array_module(x)`` needs cupy importable; mlscale must
import on machines without it, so we look at the array's type instead, and import cupy
only when we were handed a cupy array (which means it is installed and wanted).
"""
import functools

import numpy as np


def is_cupy(x):
    """True when ``x`` is a cupy array (checked by type name, cupy is not imported)."""
    return type(x).__module__.startswith("cupy")


def is_shape_only(x):
    """True for a shape-only array (mlscale.meta.MetaArray) or a shape-only module (mlscale.meta.Meta)."""
    return getattr(x, "_shape_only", False) is True or getattr(x, "shape_only", False) is True


def fused(name):
    """Decorate a function of arrays made of elementwise ops and reductions (GELU, a norm,
    a softmax) that a GPU runs as ONE fused kernel. On NumPy and CuPy it does nothing; on
    shape-only arrays (mlscale.meta) the call is charged as one kernel: the bytes of its
    inputs and outputs only, not of its temporaries (``Meta.fusion``)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for a in args:
                if getattr(a, "_shape_only", False) is True:
                    with a.dev.fusion(name):
                        return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        return wrapper
    return deco


def array_module(*arrays):
    """numpy or cupy, whichever the arrays belong to (numpy for Python lists and scalars);
    for shape-only arrays (mlscale.meta) their ``Meta`` module.

    Mixed numpy and cupy arrays raise a clear error instead of a slow implicit copy.
    """
    for a in arrays:
        if getattr(a, "_shape_only", False) is True and a.dev.shape_only:
            return a.dev
    kinds = {is_cupy(a) for a in arrays if a is not None and hasattr(a, "dtype")}
    if len(kinds) > 1:
        raise TypeError("mixed numpy and cupy arrays in one call: move them to one device first "
                        "(model.to('cupy') or cupy.asarray(x); model.to('numpy') or x.get())")
    if kinds == {True}:
        import cupy  # only reached when a cupy array was passed in

        return cupy
    return np


def resolve_xp(xp):
    """The array module named by ``xp``: None or "numpy" -> numpy, "cupy" -> cupy, or a module;
    "meta" -> a new counting-only shape-only module (``mlscale.meta.Meta()``: FLOPs, bytes
    and memory, no hardware), or a ``Meta`` itself (``Meta("H100-SXM", comm=comm)``)."""
    if xp is None or xp is np or (isinstance(xp, str) and xp == "numpy"):
        return np
    if getattr(xp, "shape_only", False) is True:
        return xp
    if isinstance(xp, str) and xp == "meta":
        from ..meta import Meta  # imported only when asked: import mlscale stays cheap

        return Meta()
    if xp == "cupy" or getattr(xp, "__name__", "") == "cupy":
        try:
            import cupy
        except ImportError as e:
            raise ImportError("xp='cupy' needs CuPy: pip install cupy-cuda12x (and a CUDA GPU)") from e
        return cupy
    raise ValueError(f"xp must be 'numpy', 'cupy', 'meta' or one of those modules (or a mlscale.meta.Meta), "
                     f"got {xp!r}")


def to_xp(x, xp):
    """``x`` as an array of module ``xp`` (copies between host and device when needed)."""
    if xp is np:
        if is_shape_only(x):
            from ..meta import ShapeOnlyError

            raise ShapeOnlyError("shape-only arrays have no values: moving one to numpy needs the data")
        return x.get() if is_cupy(x) else np.asarray(x)
    return xp.asarray(x)
