"""Sequential models whose parameters and gradients each live in ONE flat buffer.

    model = MLP([64, 128, 10], seed=0)          # float32, NumPy; xp="cupy" for a GPU
    loss = model.loss_and_grad(X, y)            # zero_grad, forward, loss, backward
    model.params                                # 1-D array, every parameter
    model.grads                                 # 1-D array, every gradient, same layout
    model.named_params()["0.weight"]            # a VIEW into model.params, (64, 128)

Why flat: data parallel training all-reduces gradients, and an all-reduce per tensor
pays the latency alpha once per tensor. With one flat buffer, a contiguous slice holds
many tensors: a *bucket* (PyTorch DDP, Li et al., VLDB 2020) costs one all-reduce, and
a fused optimizer (``mlscale.ops.adam_step``) updates the whole model in one call.

Layout: layers in forward order, within a layer its parameters in declaration order
(``weight`` then ``bias``). Backward produces gradients in the reverse order, so the
buckets returned by ``buckets(bucket_bytes)`` are contiguous slices taken from the END
of the buffer: bucket 0 is ready first, while backward is still running (DDP's overlap
of communication with computation). ``backward(dout, on_grad_ready=...)`` says when.
"""
import copy as _copy
from math import prod
from typing import NamedTuple

import numpy as np

from ._xp import array_module, is_cupy, is_shape_only, resolve_xp, to_xp
from .layers import ACTIVATIONS, Linear, softmax_cross_entropy


class ParamSlot(NamedTuple):
    """Where one parameter lives in the flat buffers: elements [start, stop)."""
    name: str      # "<layer index>.<key>", e.g. "0.weight"
    layer: int
    key: str
    start: int
    stop: int
    shape: tuple


class Bucket(NamedTuple):
    """A contiguous slice of the flat grads holding whole parameters (one all-reduce)."""
    index: int     # 0 is ready first during backward
    start: int     # element offsets into model.grads / model.params
    stop: int
    names: tuple   # parameter names, in the order backward produces them
    nbytes: int

    @property
    def slice(self):
        """``model.grads[bucket.slice]`` is this bucket's view."""
        return slice(self.start, self.stop)


class Sequential:
    """Layers applied in order, with flat ``params``/``grads`` buffers and named views.

    seed: initial values are drawn (in float64, NumPy's ``default_rng(seed)``, layer by
    layer) and then cast to ``dtype``, so every rank and every device starts identical.
    """

    def __init__(self, layers, seed=0, dtype=np.float32, xp=None):
        self.layers = list(layers)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"model dtype must be a float type (np.float32, np.float64), got {self.dtype}")
        self.seed = seed
        self.slots, offset = [], 0
        for i, layer in enumerate(self.layers):
            for key, shape in layer.param_shapes().items():
                size = prod(shape)
                self.slots.append(ParamSlot(f"{i}.{key}", i, key, offset, offset + size, tuple(shape)))
                offset += size
        self.num_params = offset
        self.xp = resolve_xp(xp)
        if is_shape_only(self.xp):  # mlscale.meta: no values to draw, only the buffers' shapes
            self._params = self.xp.empty(offset, self.dtype, kind="params")
            self.xp.charge("elementwise", 0, self._params.nbytes, self.dtype, "init params")
            self._grads = self.xp.zeros(offset, self.dtype, kind="grads")
            self._bind()
            return
        host = np.empty(offset, dtype=self.dtype)
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            for key, value in layer.init_params(rng).items():
                s = self._slot(f"{i}.{key}")
                host[s.start:s.stop] = np.asarray(value).reshape(-1)
        self._params = to_xp(host, self.xp)
        self._grads = self.xp.zeros_like(self._params)
        self._bind()

    # -- the flat buffers and their views ---------------------------------------------
    def _slot(self, name):
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(f"no parameter named {name!r}; this model has {[s.name for s in self.slots]}")

    def _bind(self):
        """Give every layer views into the flat buffers (reshape of a contiguous slice)."""
        for i, layer in enumerate(self.layers):
            mine = [s for s in self.slots if s.layer == i]
            layer.bind({s.key: self._params[s.start:s.stop].reshape(s.shape) for s in mine},
                       {s.key: self._grads[s.start:s.stop].reshape(s.shape) for s in mine})

    @property
    def params(self):
        """The flat 1-D parameter buffer. ``model.params = v`` copies v INTO it (views stay valid)."""
        return self._params

    @params.setter
    def params(self, value):
        self._assign(self._params, value, "params")

    @property
    def grads(self):
        """The flat 1-D gradient buffer, same layout as ``params``."""
        return self._grads

    @grads.setter
    def grads(self, value):
        self._assign(self._grads, value, "grads")

    def _assign(self, buf, value, what):
        if value is buf:
            return
        if tuple(value.shape) != buf.shape:
            raise ValueError(f"model.{what} = array of shape {tuple(value.shape)}: expected ({self.num_params},), "
                             f"the flat {what} of this model")
        buf[...] = to_xp(value, self.xp)

    def named_params(self):
        """``{name: view}`` into ``params``, e.g. ``{"0.weight": (64, 128), "0.bias": (128,), ...}``."""
        return {s.name: self._params[s.start:s.stop].reshape(s.shape) for s in self.slots}

    def named_grads(self):
        """``{name: view}`` into ``grads``, same names and shapes as ``named_params()``."""
        return {s.name: self._grads[s.start:s.stop].reshape(s.shape) for s in self.slots}

    @property
    def nbytes(self):
        return self.num_params * self.dtype.itemsize

    def buckets(self, bucket_bytes=25 * 2**20):
        """Contiguous slices of the flat grads, in the order backward fills them.

        Parameters are taken from the last to the first and grouped until a bucket holds
        at least ``bucket_bytes`` (PyTorch DDP's ``bucket_cap_mb``, default 25 MiB); a
        parameter is never split, so a bucket may be larger. Bucket 0 ends at the end of
        the buffer; together they cover every element exactly once.
        """
        if not bucket_bytes or bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes!r} (DDP's default is 25 MiB)")
        out, names, stop = [], [], self.num_params
        for s in reversed(self.slots):
            names.append(s.name)
            nbytes = (stop - s.start) * self.dtype.itemsize
            if nbytes >= bucket_bytes or s is self.slots[0]:
                out.append(Bucket(len(out), s.start, stop, tuple(names), nbytes))
                names, stop = [], s.start
        return out

    # -- compute ----------------------------------------------------------------------
    def _check_input(self, x):
        if is_shape_only(self.xp):
            return to_xp(x, self.xp).astype(self.dtype, copy=False)
        if not hasattr(x, "dtype"):
            x = np.asarray(x)
        if is_cupy(x) != (self.xp is not np):
            where = "cupy (GPU)" if self.xp is not np else "numpy (CPU)"
            raise TypeError(f"the model's parameters are {where} arrays but the input is a "
                            f"{'cupy' if is_cupy(x) else 'numpy'} array: move one of them "
                            f"(model.to('cupy'|'numpy') or cupy.asarray(x) / x.get())")
        return x.astype(self.dtype, copy=False)

    def forward(self, x):
        """Logits for a batch: x (batch, in_features) -> (batch, out_features)."""
        x = self._check_input(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dout, on_grad_ready=None, buckets=None, on_bucket_ready=None):
        """Backpropagate ``dout`` (d loss / d output), ADDING into ``grads``; returns d loss / d input.

        on_grad_ready(name, grad_view): called for each parameter as soon as its layer's
        backward has produced it (reverse layer order).
        buckets, on_bucket_ready(bucket, grads_slice): called once per bucket (from
        ``model.buckets(...)``) when its last parameter is ready, while backward
        continues: where a data parallel loop starts that bucket's all-reduce.
        """
        if (buckets is None) != (on_bucket_ready is None):
            raise ValueError("backward: pass both buckets=model.buckets(nbytes) and on_bucket_ready, or neither")
        pending = list(buckets or [])
        if pending and (pending[0].stop != self.num_params or pending[-1].start != 0):
            raise ValueError("backward: buckets must come from this model's buckets(bucket_bytes)")
        for i in reversed(range(len(self.layers))):
            dout = self.layers[i].backward(dout)
            for s in reversed([s for s in self.slots if s.layer == i]):
                if on_grad_ready is not None:
                    on_grad_ready(s.name, self._grads[s.start:s.stop].reshape(s.shape))
                while pending and pending[0].start >= s.start:
                    b = pending.pop(0)
                    on_bucket_ready(b, self._grads[b.start:b.stop])
        return dout

    def zero_grad(self):
        """Set every gradient to 0 (backward adds into them)."""
        self._grads[...] = 0

    def loss_and_grad(self, x, y, zero_grad=True, **backward_kwargs):
        """Forward, softmax cross-entropy against integer labels y, backward; returns the loss.

        ``zero_grad=False`` adds to the gradients already there (gradient accumulation);
        keyword arguments go to ``backward`` (on_grad_ready, buckets, on_bucket_ready).
        """
        if zero_grad:
            self.zero_grad()
        logits = self.forward(x)  # (batch, num_classes)
        loss, dlogits = softmax_cross_entropy(logits, to_xp(y, self.xp))
        self.backward(dlogits, **backward_kwargs)
        return loss

    def predict(self, x, batch_size=4096):
        """Predicted class per row of x, (batch,) integers, in batches of ``batch_size``."""
        x = self._check_input(x)
        parts = [self.forward(x[i:i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)]
        return self.xp.concatenate(parts) if parts else self.xp.zeros(0, dtype=np.int64)

    def accuracy(self, x, y):
        """Fraction of rows of x whose predicted class equals y, a Python float."""
        if len(x) != len(y):
            raise ValueError(f"accuracy: {len(x)} inputs but {len(y)} labels")
        return float((self.predict(x) == to_xp(y, self.xp)).mean())

    def flops_per_sample(self, backward=True):
        """FLOPs for one sample: forward (2 per weight) plus backward (4 per weight), about 6 * params.

        The compute model of the simulator charges ``batch * flops_per_sample() / rate``.
        """
        return sum(layer.flops_per_sample(backward) for layer in self.layers)

    # -- copies, checkpoints, devices -------------------------------------------------
    def copy(self):
        """An independent model with the same layers and a copy of params and grads."""
        new = _copy.copy(self)
        new.layers = [_copy.copy(layer) for layer in self.layers]
        for layer in new.layers:  # drop cached activations: they belong to the original
            for k in [k for k in vars(layer) if k.startswith("_")]:
                setattr(layer, k, None)
        new._params, new._grads = self._params.copy(), self._grads.copy()
        new._bind()
        return new

    def astype(self, dtype):
        """A copy of the model with params and grads cast to ``dtype`` (e.g. np.float16)."""
        new = self.copy()
        new.dtype = np.dtype(dtype)
        if new.dtype.kind != "f":
            raise TypeError(f"astype: a model's dtype must be a float type, got {new.dtype}")
        new._params, new._grads = new._params.astype(new.dtype), new._grads.astype(new.dtype)
        new._bind()
        return new

    def state_dict(self):
        """``{name: copy of the parameter}``, ordered as in the flat buffer."""
        return {name: v.copy() for name, v in self.named_params().items()}

    def load_state_dict(self, state):
        """Copy each named array of ``state`` into the model (names and shapes must match)."""
        views = self.named_params()
        missing, unexpected = set(views) - set(state), set(state) - set(views)
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing {sorted(missing)}, unexpected {sorted(unexpected)}; "
                           f"this model has {list(views)}")
        for name, view in views.items():
            if tuple(state[name].shape) != view.shape:
                raise ValueError(f"load_state_dict: {name!r} has shape {tuple(state[name].shape)}, "
                                 f"the model expects {view.shape}")
            view[...] = to_xp(state[name], self.xp)
        return self

    def to(self, xp):
        """Move params and grads to ``xp`` ("numpy" or "cupy") in place; returns the model."""
        xp = resolve_xp(xp)
        if xp is not self.xp:
            self._params, self._grads = to_xp(self._params, xp), to_xp(self._grads, xp)
            self.xp = xp
            self._bind()
        return self

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}([{inner}], num_params={self.num_params}, dtype={self.dtype.name})"


class MLP(Sequential):
    """A multi-layer perceptron: ``Linear(sizes[0], sizes[1])``, activation, ..., ``Linear(.., sizes[-1])``.

    No activation after the last layer: it outputs logits for ``softmax_cross_entropy``.
    Layer names count activations too (PyTorch's ``nn.Sequential``): "0.weight", "2.weight", ...
    """

    def __init__(self, sizes, activation="relu", seed=0, dtype=np.float32, xp=None, bias=True):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP sizes must list >= 2 positive widths (input, ..., classes), got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation {activation!r} unknown: use one of {sorted(ACTIVATIONS)}")
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(fan_in, fan_out, bias=bias))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.sizes, self.activation = sizes, activation
        super().__init__(layers, seed=seed, dtype=dtype, xp=xp)


__all__ = ["Sequential", "MLP", "Bucket", "ParamSlot", "array_module"]
