"""Causal multi-head self-attention: the core as functions on (batch, heads, seq, head_dim),
and the layer around it (QKV projection, heads, output projection).

    y, cache = attention_forward(q, k, v)           # q, k, v, y: (batch, heads, seq, head_dim)
    dq, dk, dv = attention_backward(dy, cache)
    q, k, v = split_qkv(qkv, num_heads)             # (batch, seq, 3 * d) -> 3 x (batch, heads, seq, head_dim)
    x = merge_heads(y)                              # (batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim)

Scaled dot-product attention (Vaswani et al. 2017, eq. 1) with a causal mask (GPT,
Radford et al. 2018): ``S = Q K^T / sqrt(head_dim)``, ``S[i, j] = -inf`` for j > i,
``P = softmax(S)`` over the last axis, ``Y = P V``. Backward, beside it:
``dV = P^T dY``, ``dP = dY V^T``, ``dS = P * (dP - rowsum(dP * P))``, ``dQ = dS K / sqrt(head_dim)``,
``dK = dS^T Q / sqrt(head_dim)``.

The core treats heads independently, so a tensor-parallel attention calls it on its own
subset of heads unchanged. ``keep_probs=False`` is Korthikanti et al. 2022's *selective
recomputation*: the cache keeps Q, K, V but not the (batch, heads, seq, seq) matrix P,
which backward recomputes with the very same operations (bitwise the same P); the FLOPs
of that recomputation (the Q K^T matmul: 2 b a s^2 head_dim) are returned by
:func:`recompute_flops` and added to ``CausalSelfAttention.recompute_flops``.

Layout of the fused projection ``qkv.weight`` (d, 3d), columns ``[Q | K | V]``, each d
wide, head h in columns ``h*head_dim:(h+1)*head_dim`` of each: a TP rank holding heads
``h0:h1`` takes those columns of each third (and the same rows of ``proj.weight`` (d, d)).

Matmuls of 16-bit arrays run in float32 and round the result back (fp16 in, fp32
accumulate, fp16 out, as tensor cores do); the softmax runs in float32 for them.
"""
import contextlib
import math

import numpy as np

from ._xp import array_module, fused
from .layers import Layer
from .module import Module


def matmul(a, b):
    """``a @ b``; 16-bit inputs are multiplied in float32 and the result rounded to their dtype
    (on shape-only arrays, mlscale.meta, one 16-bit tensor-core matmul: the same shapes and
    FLOPs, charged at the 16-bit rate with 16-bit reads and writes, as the GPU does it)."""
    if a.dtype.itemsize < 4 and not getattr(a, "_shape_only", False):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(a.dtype)
    return a @ b


@fused("softmax")
def _probs(q, k, causal):
    """softmax(Q K^T / sqrt(head_dim)) with the causal mask, (..., seq, seq)."""
    xp = array_module(q)
    t = q.shape[-2]
    acc = np.float32 if q.dtype.itemsize < 4 else q.dtype
    s = (q.astype(acc, copy=False) @ k.astype(acc, copy=False).swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        s = xp.where(xp.tril(xp.ones((t, t), dtype=bool)), s, -xp.inf)  # j > i masked
    s = s - s.max(axis=-1, keepdims=True)
    e = xp.exp(s)
    return (e / e.sum(axis=-1, keepdims=True)).astype(q.dtype, copy=False)


def attention_forward(q, k, v, causal=True, keep_probs=True):
    """Scaled dot-product attention; q, k, v (..., seq, head_dim). Returns ``(y, cache)``.

    keep_probs=False keeps only (q, k, v) in the cache (selective recomputation)."""
    if not (q.shape == k.shape == v.shape) or q.ndim < 2:
        raise ValueError(f"attention_forward: q, k, v must have one shape (..., seq, head_dim), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    with _attention_class(q):
        p = _probs(q, k, causal)
        y = matmul(p, v)  # (..., seq, head_dim)
    return y, (q, k, v, p if keep_probs else None, causal)


def _attention_class(x):
    """On shape-only arrays, charge the ops inside as "attention" (its own efficiency)."""
    if getattr(x, "_shape_only", False):
        return array_module(x).op_class("attention")
    return contextlib.nullcontext()


def attention_backward(dy, cache):
    """``(dq, dk, dv)`` from dy (..., seq, head_dim) and the forward's cache."""
    q, k, v, p, causal = cache
    with _attention_class(q):
        if p is None:  # selective recomputation: the same operations as the forward
            p = _probs(q, k, causal)
        dv = matmul(p.swapaxes(-1, -2), dy)
        dp = matmul(dy, v.swapaxes(-1, -2))
        ds = _softmax_backward(p, dp, 1.0 / math.sqrt(q.shape[-1]), q.dtype)
        return matmul(ds, k), matmul(ds.swapaxes(-1, -2), q), dv


@fused("softmax_backward")
def _softmax_backward(p, dp, scale, dtype):
    """dS = P * (dP - rowsum(dP * P)) * scale (in float32 for 16-bit P), as ``dtype``."""
    acc = np.float32 if p.dtype.itemsize < 4 else p.dtype
    pa, dpa = p.astype(acc, copy=False), dp.astype(acc, copy=False)
    return (pa * (dpa - (dpa * pa).sum(axis=-1, keepdims=True)) * scale).astype(dtype)


def recompute_flops(batch, heads, seq, head_dim):
    """FLOPs that backward spends recomputing P under selective recomputation (Q K^T)."""
    return 2 * batch * heads * seq * seq * head_dim


def split_qkv(qkv, num_heads):
    """(batch, seq, 3 * d) -> q, k, v, each (batch, heads, seq, head_dim), views of qkv."""
    b, t, d3 = qkv.shape
    d = d3 // 3
    return qkv.reshape(b, t, 3, num_heads, d // num_heads).transpose(2, 0, 3, 1, 4)


def merge_heads(y):
    """(batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim), a new contiguous array."""
    b, h, t, dh = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def split_heads(x, num_heads):
    """(batch, seq, d) -> (batch, heads, seq, head_dim), a view."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3)


class Dense(Layer):
    """``y = x @ weight + bias`` on (..., in_features), weight (in_features, out_features).

    Like :class:`mlscale.nn.Linear` (same layout) but for any leading shape, with 16-bit
    inputs multiplied in float32 (:func:`matmul`). Keeps its input x for backward.
    ``init_std``: weights normal(0, init_std), bias zeros (GPT-2's init)."""

    def __init__(self, in_features, out_features, bias=True, init_std=0.02):
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bool(bias)
        self.init_std = float(init_std)
        self.params = self.grads = None
        self._x = None

    def param_shapes(self):
        shapes = {"weight": (self.in_features, self.out_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng):
        out = {"weight": rng.normal(0.0, self.init_std, size=(self.in_features, self.out_features))}
        if self.bias:
            out["bias"] = np.zeros(self.out_features)
        return out

    def forward(self, x):  # (..., in_features)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Dense({self.in_features}, {self.out_features}) got input of shape {tuple(x.shape)}")
        self._x = x
        y = matmul(x.reshape(-1, self.in_features), self.params["weight"])  # one GEMM, not one per batch row
        if self.bias:
            y += self.params["bias"]
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dout):  # (..., out_features)
        x2, d2 = self._x.reshape(-1, self.in_features), dout.reshape(-1, self.out_features)
        self.grads["weight"] += matmul(x2.T, d2)
        if self.bias:
            self.grads["bias"] += d2.sum(axis=0, dtype=np.float32 if d2.dtype.itemsize < 4 else d2.dtype)
        return matmul(d2, self.params["weight"].T).reshape(self._x.shape)

    def forward_flops(self, tokens):
        return 2 * tokens * self.in_features * self.out_features

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, bias={self.bias})"


class CausalSelfAttention(Module):
    """x (batch, seq, d) -> qkv = x Wqkv + bqkv -> heads -> causal attention -> merge -> proj.

    Parameters ``qkv.weight`` (d, 3d), ``qkv.bias`` (3d,), ``proj.weight`` (d, d),
    ``proj.bias`` (d,). ``keep_probs=False``: selective recomputation of P in backward.
    Keeps for backward: x (by qkv), qkv (3 s b h), P (a s^2 b, unless selective), and the
    merged heads (by proj): 5 s b h + a s^2 b elements.
    """

    def __init__(self, d, num_heads, bias=True, proj_std=0.02, keep_probs=True):
        if int(d) % int(num_heads):
            raise ValueError(f"CausalSelfAttention: d_model={d} is not divisible by num_heads={num_heads}: "
                             f"pick num_heads dividing d_model (head_dim = d_model / num_heads)")
        self.d, self.num_heads, self.keep_probs = int(d), int(num_heads), bool(keep_probs)
        self.qkv = Dense(d, 3 * d, bias=bias)
        self.proj = Dense(d, d, bias=bias, init_std=proj_std)
        self.recompute_flops = 0
        self._cache = self._qkv = None

    def children(self):
        return {"qkv": self.qkv, "proj": self.proj}

    def forward(self, x):  # (batch, seq, d)
        if x.ndim != 3 or x.shape[-1] != self.d:
            raise ValueError(f"CausalSelfAttention(d={self.d}) got input of shape {tuple(x.shape)}: "
                             f"expected (batch, seq, {self.d})")
        self._qkv = self.qkv.forward(x)  # (batch, seq, 3d)
        q, k, v = split_qkv(self._qkv, self.num_heads)  # (batch, heads, seq, head_dim) each
        y, self._cache = attention_forward(q, k, v, causal=True, keep_probs=self.keep_probs)
        return self.proj.forward(merge_heads(y))  # (batch, seq, d)

    def backward(self, dout):  # (batch, seq, d)
        if self._cache is None:
            raise RuntimeError("CausalSelfAttention.backward called before forward")
        b, t, _ = dout.shape
        dy = split_heads(self.proj.backward(dout), self.num_heads)
        if not self.keep_probs:
            self.recompute_flops += recompute_flops(b, self.num_heads, t, self.d // self.num_heads)
        dq, dk, dv = attention_backward(dy, self._cache)
        xp = array_module(dout)
        dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(b, t, 3 * self.d)
        return self.qkv.backward(dqkv)

    def __repr__(self):
        return f"CausalSelfAttention(d={self.d}, num_heads={self.num_heads})"


__all__ = ["matmul", "attention_forward", "attention_backward", "recompute_flops", "split_qkv", "split_heads",
           "merge_heads", "Dense", "CausalSelfAttention"]
