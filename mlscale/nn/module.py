"""Layers made of layers (a transformer block: norms, attention, MLP), and the bytes a
layer keeps for its backward.

A :class:`Module` names its sub-layers in ``children()`` (``{"ln1": LayerNorm, ...}``,
each also an attribute of that name); its parameters are theirs, prefixed
(``"attn.qkv.weight"``), in that order, so it sits in ``Sequential``'s flat buffers like
any layer and ``bind`` hands each child its own views. ``copy.copy(module)`` copies the
children too (sharing the parameter views): the pipeline keeps one copy per micro-batch,
each with its own cached activations.

:func:`saved_nbytes` measures activation memory: the bytes of every array a layer holds
for backward (its ``_``-prefixed attributes, recursively through tuples and children),
each underlying buffer counted once (a view of an array already counted adds nothing).
"""
import copy as _copy

from .layers import Layer


class Module(Layer):
    """A layer whose parameters are those of its ``children()``, names prefixed by theirs."""

    def children(self):
        return {}

    def param_shapes(self):
        return {f"{name}.{k}": s for name, c in self.children().items() for k, s in c.param_shapes().items()}

    def init_params(self, rng):
        return {f"{name}.{k}": v for name, c in self.children().items() for k, v in c.init_params(rng).items()}

    def bind(self, params, grads):
        self.params, self.grads = params, grads
        for name, c in self.children().items():
            pre = name + "."
            c.bind({k[len(pre):]: v for k, v in params.items() if k.startswith(pre)},
                   {k[len(pre):]: v for k, v in grads.items() if k.startswith(pre)})

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for name, c in self.children().items():
            setattr(new, name, _copy.copy(c))
        return new

    def clear_cache(self):
        """Drop every array kept for backward (here and in the children)."""
        clear_cache(self)


def _is_array(a):
    return hasattr(a, "nbytes") and hasattr(a, "dtype") and hasattr(a, "shape")


def _root(a):
    while getattr(a, "base", None) is not None and _is_array(a.base):
        a = a.base
    return a


def _walk(obj, out):
    if _is_array(obj):
        out[id(_root(obj))] = _root(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _walk(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _walk(o, out)


def saved_arrays(layer):
    """``{id: array}`` of the buffers ``layer`` (and its children) keep for backward."""
    out = {}
    for k, v in vars(layer).items():
        if k.startswith("_"):
            _walk(v, out)
    if isinstance(layer, Module):
        for c in layer.children().values():
            out.update(saved_arrays(c))
    return out


def saved_nbytes(layer):
    """Bytes of activations ``layer`` holds for its backward (each buffer once)."""
    return sum(int(a.nbytes) for a in saved_arrays(layer).values())


def clear_cache(layer):
    """Set every ``_``-prefixed attribute of ``layer`` and its children to None."""
    for k in [k for k in vars(layer) if k.startswith("_")]:
        setattr(layer, k, None)
    if isinstance(layer, Module):
        for c in layer.children().values():
            clear_cache(c)


__all__ = ["Module", "saved_arrays", "saved_nbytes", "clear_cache"]
