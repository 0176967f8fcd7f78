"""Reduction operators shared by every algorithm: "sum", "mean", "max", "min", "prod".

``mean`` reduces as a sum and divides once at the end (``finish``), as MPI users do
by hand; integer inputs then give float64, as ``np.mean`` does.
"""
import numpy as np

from ..comm.errors import CommError

OPS = ("sum", "mean", "max", "min", "prod")

_UFUNC = {"sum": "add", "mean": "add", "max": "maximum", "min": "minimum", "prod": "multiply"}


def check_op(op):
    if op not in _UFUNC:
        raise CommError(f"unknown reduction op {op!r}: use one of {', '.join(OPS)}")
    return op


def get_xp(x):
    """numpy or cupy, whichever owns ``x`` (cupy is only imported if x is a cupy array)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    if mod.startswith("mlscale.meta"):  # a shape-only array: its own module (mlscale.meta.Meta)
        return x.xp
    return np


def buffer_xp(comm, x):
    """The module to allocate a collective's buffers for ``x``: ``comm.xp``, or for a
    shape-only array (mlscale.meta) its own module, so no real memory is touched."""
    return x.xp if getattr(x, "_shape_only", False) is True else comm.xp


_NP_UFUNC = {op: getattr(np, name) for op, name in _UFUNC.items()}


def reduce_into(acc, x, op):
    """acc <- acc (op) x, in place. Returns acc."""
    if type(acc) is np.ndarray:  # the common case, first (once per message of a reduction)
        _NP_UFUNC[op](acc, x, out=acc)
        return acc
    xp = get_xp(acc)
    getattr(xp, _UFUNC[op])(acc, x, out=acc)
    return acc


def finish(acc, op, world_size):
    """The last step of a reduction: divide by world_size for "mean"."""
    if op != "mean":
        return acc
    if acc.dtype.kind in "fc":
        acc /= acc.dtype.type(world_size)
        return acc
    return acc / np.float64(world_size)
