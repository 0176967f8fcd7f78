"""Mixed-precision training: 16-bit compute, fp32 master weights, dynamic loss scaling
(Micikevicius et al. 2018, "Mixed Precision Training"; PyTorch's ``torch.amp.GradScaler``).

    mp = MixedPrecision(model, "bfloat16", lambda master: nn.Adam(master, lr=1e-3))
    for x, y in batches:
        loss = mp.step(x, y)                 # None-free: the loss of this batch
    mp.scaler.scale, mp.skipped_steps        # the loss scale now, steps skipped so far

Per step: zero the 16-bit grads; forward and loss in 16 bits; backward from
``dlogits * scale``; optionally reduce the gradients over data-parallel ranks
(``reduce_grads``: in fp32 or in 16 bits, :func:`reduce_in_precision`); cast to fp32 and
divide by the scale; if any is inf/NaN the step is **skipped** and the scale halved,
else the optimizer updates the fp32 master weights and they are cast back into the model.
After ``growth_interval`` good steps in a row the scale doubles.

Formats. **float16** (IEEE half, 5-bit exponent: max 65504, hence the loss scale) is a
real dtype: the model is ``model.astype(np.float16)`` and every array in it is float16
(matmuls, softmax, norms accumulate in float32 and round back, as GPU kernels do).
**bfloat16** (8-bit exponent, 7-bit mantissa) has no NumPy dtype: it is *emulated* in
float32 arrays holding bf16 values, :func:`round_to_bf16` (round to nearest even on the
bit pattern) applied to the weights, to each layer's output and input gradient (at
layer boundaries: inside a block, between its sub-layers, values stay float32), and to
the gradients. It needs no loss scaling (its range is fp32's), so the default scale is 1.

Memory per parameter (``state_nbytes``): 16-bit params (2 B) and grads (2 B), fp32
master (4 B) and Adam m, v (8 B): 16 B, as ZeRO and the Ultra-Scale Playbook count
(``flops.model_state_bytes``); float16 measures exactly that. Emulated bf16 stores its
16-bit values in 4 B, so it measures 20 B per parameter (nominally 16).
"""
import numpy as np

from ._xp import array_module, is_shape_only, to_xp
from .layers import softmax_cross_entropy

PRECISIONS = ("float16", "bfloat16")


def round_to_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32 values.

    On the bit pattern: add 0x7FFF plus the lowest kept bit, clear the low 16 bits.
    Inf stays inf, NaN stays NaN, values past bf16's max round to inf."""
    xp = array_module(x)
    x = xp.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) & np.uint32(0xFFFF0000)).view(np.float32)
    return xp.where(xp.isnan(x), x, r)


def to_bf16_bits(x):
    """The bfloat16 bit patterns (uint16) of float32 ``x``: what goes on the wire (2 B each)."""
    return (round_to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16_bits(bits):
    """float32 values of bfloat16 bit patterns (uint16)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def cast(x, precision):
    """``x`` in ``precision``: "float16" -> float16 array, "bfloat16" -> bf16 values in float32,
    "float32" -> float32."""
    if precision == "float16":
        return x.astype(np.float16)
    if precision == "bfloat16":
        return round_to_bf16(x)
    if precision == "float32":
        return x.astype(np.float32)
    raise ValueError(f"precision={precision!r}: use 'float16', 'bfloat16' or 'float32'")


def reduce_in_precision(comm, grads, dtype="float32", op="mean", collective="all_reduce", **kwargs):
    """All-reduce (or reduce-scatter) ``grads`` over ``comm`` in ``dtype``; returns float32.

    dtype "float32": cast up first (exact sums of 16-bit values; 4 B per element on the
    wire). "float16": reduce float16 arrays (2 B per element; the sum is rounded to
    fp16 and may overflow: the loss scaler then skips the step). "bfloat16": the values
    are rounded to bf16 before and after a float32 reduction (the arithmetic of a bf16
    all-reduce of two ranks; the wire carries 4 B per element, emulated).
    ``collective``: "all_reduce" or "reduce_scatter" (ZeRO-2/3), other kwargs passed on."""
    if collective not in ("all_reduce", "reduce_scatter"):
        raise ValueError(f"reduce_in_precision: collective={collective!r}, use 'all_reduce' or 'reduce_scatter'")
    if dtype not in ("float32",) + PRECISIONS:
        raise ValueError(f"reduce_in_precision: dtype={dtype!r}, use 'float32', 'float16' or 'bfloat16'")
    out = getattr(comm, collective)(cast(grads, dtype), op=op, **kwargs)
    return cast(out, "bfloat16") if dtype == "bfloat16" else out.astype(np.float32)


class LossScaler:
    """Dynamic loss scaling: skip and multiply by ``backoff`` on inf/NaN, multiply by
    ``growth`` after ``growth_interval`` finite steps in a row (PyTorch GradScaler's rule).

    A scale that falls below ``min_scale`` raises FloatingPointError: the gradients are
    inf/NaN at any scale (a diverged model or a bad input), not a range problem."""

    def __init__(self, init_scale=2.0 ** 16, growth=2.0, backoff=0.5, growth_interval=2000, min_scale=2.0 ** -24):
        if not init_scale > 0 or not growth >= 1 or not 0 < backoff < 1 or growth_interval < 1:
            raise ValueError(f"LossScaler: need init_scale > 0, growth >= 1, 0 < backoff < 1, growth_interval >= 1; "
                             f"got {init_scale}, {growth}, {backoff}, {growth_interval}")
        self.scale, self.growth, self.backoff = float(init_scale), float(growth), float(backoff)
        self.growth_interval, self.min_scale = int(growth_interval), float(min_scale)
        self.good_steps = 0
        self.history = []  # (scale used, skipped) per step

    def update(self, found_inf):
        """Record one step that used ``self.scale``; returns True if the step must be skipped."""
        self.history.append((self.scale, bool(found_inf)))
        if found_inf:
            self.scale *= self.backoff
            self.good_steps = 0
            if self.scale < self.min_scale:
                raise FloatingPointError(f"loss scale underflowed to {self.scale:g} (< min_scale={self.min_scale:g}) "
                                         f"after {len(self.history)} steps: the gradients are inf/NaN at every scale. "
                                         f"Check the inputs and the learning rate (a diverged model?)")
            return True
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth
            self.good_steps = 0
        return False


class MixedPrecision:
    """Train ``model`` (a float32 ``Sequential``/``GPT``) in 16 bits with fp32 master weights.

    precision       "float16" or "bfloat16" (emulated, see the module docstring)
    make_optimizer  ``lambda master: nn.Adam(master, lr=...)``: built on the fp32 master
    scaler          a LossScaler; default LossScaler() for float16, a fixed scale of 1
                    (growth 1) for bfloat16
    reduce_grads    None, or ``g -> g`` applied to the 16-bit scaled gradients before
                    unscaling, e.g. ``lambda g: reduce_in_precision(comm, g, "float16")``
                    (data parallel): its result is cast to float32 and unscaled
    """

    def __init__(self, model, precision, make_optimizer, scaler=None, reduce_grads=None):
        if precision not in PRECISIONS:
            raise ValueError(f"MixedPrecision: precision={precision!r}, use one of {PRECISIONS}")
        if model.dtype != np.float32:
            raise TypeError(f"MixedPrecision: pass the float32 model (its values become the master weights), "
                            f"got dtype {model.dtype}")
        self.precision = precision
        if is_shape_only(model.params):  # mlscale.meta: the master weights count as optimizer state (ZeRO's K=12)
            self.master = model.xp.empty_like(model.params, kind="optimizer")
            self.master[...] = model.params
        else:
            self.master = model.params.copy()  # fp32 master weights
        self.model = model.astype(np.float16) if precision == "float16" else model.copy()
        self.model.params[...] = cast(self.master, precision)
        self.optimizer = make_optimizer(self.master)
        if getattr(self.optimizer, "params", None) is not self.master:
            raise TypeError("make_optimizer must build the optimizer on the master array it is given, "
                            "e.g. lambda master: nn.Adam(master, lr=1e-3)")
        self.scaler = scaler if scaler is not None else (
            LossScaler() if precision == "float16" else LossScaler(init_scale=1.0, growth=1.0))
        self.reduce_grads = reduce_grads
        self.skipped_steps = self.steps = 0

    def _round(self, a):
        return round_to_bf16(a) if self.precision == "bfloat16" and a is not None else a

    def forward(self, x):
        """Logits of ``x`` in 16 bits (bf16: rounded after every layer)."""
        x = self.model._check_input(x)
        for layer in self.model.layers:
            x = self._round(layer.forward(x))
        return x

    def step(self, x, y):
        """One training step on (x, y); returns the loss (of the 16-bit forward)."""
        m, xp = self.model, self.model.xp
        m.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is expected, and caught below
            loss, dout = softmax_cross_entropy(self.forward(x), to_xp(y, xp))
            dout = self._round((dout.astype(np.float32) * self.scaler.scale).astype(m.dtype))  # inf past 65504
            for layer in reversed(m.layers):
                dout = self._round(layer.backward(dout))
        g = self._round(m.grads)
        if self.reduce_grads is not None:
            g = self.reduce_grads(g)
        g32 = g.astype(np.float32) / np.float32(self.scaler.scale)
        # shape-only (mlscale.meta): no values to test; the step modelled is one that is taken
        found_inf = False if is_shape_only(g32) else not bool(xp.isfinite(g32).all())
        self.steps += 1
        if self.scaler.update(found_inf):
            self.skipped_steps += 1
        else:
            self.optimizer.step(g32)
            m.params[...] = cast(self.master, self.precision)
        return loss

    def state_nbytes(self):
        """Bytes held: {"params", "grads" (16-bit model), "master", "optimizer", "total"}."""
        out = {"params": int(self.model.params.nbytes), "grads": int(self.model.grads.nbytes),
               "master": int(self.master.nbytes),
               "optimizer": sum(int(v.nbytes) for v in self.optimizer.state_dict().values() if hasattr(v, "nbytes"))}
        out["total"] = sum(out.values())
        return out


__all__ = ["PRECISIONS", "round_to_bf16", "to_bf16_bits", "from_bf16_bits", "cast", "reduce_in_precision",
           "LossScaler", "MixedPrecision"]
