"""LayerNorm and RMSNorm over the last axis, as functions (forward and backward side by side)
and as layers with parameters in the model's flat buffers.

    y, cache = layernorm_forward(x, weight, bias)        # x: (..., d), weight/bias: (d,)
    dx, dweight, dbias = layernorm_backward(dy, cache, weight)  # the same shapes
    y, cache = rmsnorm_forward(x, weight)
    dx, dweight = rmsnorm_backward(dy, cache, weight)

LayerNorm (Ba, Kiros and Hinton 2016): ``y = (x - mean) / sqrt(var + eps) * weight + bias``,
statistics over the last axis (biased variance, as PyTorch). RMSNorm (Zhang and Sennrich
2019): ``y = x / sqrt(mean(x^2) + eps) * weight``, no centring, no bias (LLaMA).

The functions normalise each row on its own, so they work on any leading shape: a
sequence-parallel LayerNorm calls them on its slice of the sequence unchanged (its
``dweight``/``dbias`` are then partial sums, to be all-reduced over the tensor-parallel
group). Low-precision inputs (float16, or bfloat16 kept in float32) get their statistics
in float32, the way mixed-precision kernels do, and the output in the input's dtype.

Backward (with ``xhat = (x - mean) * rstd`` and ``g = dy * weight``):
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` for LayerNorm and
``dx = rstd * (g - xhat * mean(g * xhat))`` for RMSNorm; ``dweight = sum(dy * xhat)``,
``dbias = sum(dy)`` over every axis but the last.

A layer keeps, for backward, its input x (s*b*h elements per norm) and the per-row
statistics (mean and rstd for LayerNorm, rstd for RMSNorm: s*b elements each).
"""
import numpy as np

from ._xp import array_module, fused
from .layers import Layer


def _acc_dtype(x):
    """float32 for 16-bit inputs (statistics need the range and precision), else x's dtype."""
    return np.float32 if x.dtype.itemsize < 4 else x.dtype


def _rows(a):
    return a.reshape(-1, a.shape[-1])


@fused("layernorm_forward")
def layernorm_forward(x, weight, bias, eps=1e-5):
    """LayerNorm of ``x`` (..., d) over its last axis; returns ``(y, cache)``, y like x."""
    xp = array_module(x)
    xa = x.astype(_acc_dtype(x), copy=False)
    mean = xa.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = xa - mean
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    y = (xc * rstd * weight + bias).astype(x.dtype, copy=False)
    return y, (x, mean.astype(x.dtype), rstd.astype(x.dtype))


@fused("layernorm_backward")
def layernorm_backward(dy, cache, weight):
    """Gradients of LayerNorm: ``(dx, dweight, dbias)`` from dy (..., d), the forward's cache and weight."""
    x, mean, rstd = cache
    acc = _acc_dtype(x)
    xhat = (x.astype(acc) - mean.astype(acc)) * rstd.astype(acc)
    dya = dy.astype(acc, copy=False)
    g = dya * weight
    dx = rstd.astype(acc) * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = _rows(dya * xhat).sum(axis=0)
    dbias = _rows(dya).sum(axis=0)
    return dx.astype(x.dtype, copy=False), dweight, dbias


@fused("rmsnorm_forward")
def rmsnorm_forward(x, weight, eps=1e-5):
    """RMSNorm of ``x`` (..., d) over its last axis; returns ``(y, cache)``."""
    xp = array_module(x)
    xa = x.astype(_acc_dtype(x), copy=False)
    rstd = 1.0 / xp.sqrt((xa * xa).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    y = (xa * rstd * weight).astype(x.dtype, copy=False)
    return y, (x, rstd.astype(x.dtype))


@fused("rmsnorm_backward")
def rmsnorm_backward(dy, cache, weight):
    """Gradients of RMSNorm: ``(dx, dweight)`` from dy, the forward's cache and weight."""
    x, rstd = cache
    acc = _acc_dtype(x)
    r = rstd.astype(acc)
    xhat = x.astype(acc) * r
    dya = dy.astype(acc, copy=False)
    g = dya * weight
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx.astype(x.dtype, copy=False), _rows(dya * xhat).sum(axis=0)


class LayerNorm(Layer):
    """LayerNorm over the last axis of (..., d); parameters ``weight`` (ones) and ``bias`` (zeros)."""

    def __init__(self, d, eps=1e-5):
        self.d, self.eps = int(d), float(eps)
        self.params = self.grads = None
        self._cache = None

    def param_shapes(self):
        return {"weight": (self.d,), "bias": (self.d,)}

    def init_params(self, rng):
        return {"weight": np.ones(self.d), "bias": np.zeros(self.d)}

    def forward(self, x):
        if x.shape[-1] != self.d:
            raise ValueError(f"LayerNorm({self.d}) got input of shape {tuple(x.shape)}: the last axis must be {self.d}")
        y, self._cache = layernorm_forward(x, self.params["weight"], self.params["bias"], self.eps)
        return y

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        dx, dw, db = layernorm_backward(dout, self._cache, self.params["weight"])
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx

    def __repr__(self):
        return f"LayerNorm({self.d})"


class RMSNorm(Layer):
    """RMSNorm over the last axis of (..., d); parameter ``weight`` (ones)."""

    def __init__(self, d, eps=1e-5):
        self.d, self.eps = int(d), float(eps)
        self.params = self.grads = None
        self._cache = None

    def param_shapes(self):
        return {"weight": (self.d,)}

    def init_params(self, rng):
        return {"weight": np.ones(self.d)}

    def forward(self, x):
        if x.shape[-1] != self.d:
            raise ValueError(f"RMSNorm({self.d}) got input of shape {tuple(x.shape)}: the last axis must be {self.d}")
        y, self._cache = rmsnorm_forward(x, self.params["weight"], self.eps)
        return y

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("RMSNorm.backward called before forward")
        dx, dw = rmsnorm_backward(dout, self._cache, self.params["weight"])
        self.grads["weight"] += dw
        return dx

    def __repr__(self):
        return f"RMSNorm({self.d})"


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}

__all__ = ["layernorm_forward", "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward",
           "LayerNorm", "RMSNorm", "NORMS"]
