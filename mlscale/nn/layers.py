"""Layers with hand-written backward passes, each right beside its forward (micrograd style).

Every layer works on NumPy and CuPy arrays alike: the math uses only operators and
methods the two libraries share (``@``, ``.sum``, ``xp.tanh``), with ``xp`` found from
the input array. A layer owns no memory of its own for parameters: ``Sequential`` hands
it views into one flat ``params`` buffer and one flat ``grads`` buffer (see model.py).

Conventions: a batch is the first axis; ``Linear`` stores ``weight`` as
``(in_features, out_features)`` so the forward is ``x @ weight + bias`` (PyTorch stores
the transpose). ``backward(dout)`` ADDS into the grads (PyTorch semantics: call
``zero_grad()`` between steps, or keep adding to accumulate over micro-batches) and
returns the gradient with respect to the layer's input.
"""
import math

from ._xp import array_module, fused, is_shape_only


class Layer:
    """Base class: a layer with no parameters, whose forward is the identity."""

    def param_shapes(self):
        """``{name: shape}`` of the parameters, in the order they sit in the flat buffer."""
        return {}

    def init_params(self, rng):
        """``{name: float64 numpy array}`` of initial values drawn from ``rng``."""
        return {}

    def bind(self, params, grads):
        """Take views into the model's flat buffers: ``params[name]`` and ``grads[name]``."""
        self.params, self.grads = params, grads

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout

    # Zero-bubble pipelines (Qi et al. 2024) split a backward in two: B, the gradient of
    # the input (the stage before waits for it), and W, that of the weights (nobody waits).
    # A layer that does not split does all of it in B.
    def backward_input(self, dout):
        """B: d loss / d input (and, for a layer that does not split, its weight grads)."""
        return self.backward(dout)

    def backward_weight(self, dout):
        """W: add d loss / d weights for the ``dout`` given to backward_input."""

    def flops_per_sample(self, backward=True):
        """Floating point operations for one sample (forward, plus backward if asked)."""
        return 0

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """Affine map ``y = x @ W + b``, W of shape (in_features, out_features).

    Init as PyTorch's ``nn.Linear``: W and b uniform in +-1/sqrt(in_features)
    (Kaiming-uniform with a = sqrt(5), He et al. 2015).
    """

    def __init__(self, in_features, out_features, bias=True):
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"Linear({in_features}, {out_features}): sizes must be >= 1")
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bool(bias)
        self.params = self.grads = None
        self._x = None

    def param_shapes(self):
        shapes = {"weight": (self.in_features, self.out_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng):
        bound = 1.0 / math.sqrt(self.in_features)
        return {name: rng.uniform(-bound, bound, size=shape) for name, shape in self.param_shapes().items()}

    def forward(self, x):  # x: (batch, in_features)
        if self.params is None:
            raise RuntimeError("this Linear has no parameters yet: put it in a model, "
                               "e.g. Sequential([Linear(4, 3)], seed=0)")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) got input of shape "
                             f"{tuple(x.shape)}: expected (batch, {self.in_features})")
        self._x = x
        out = x @ self.params["weight"]  # (batch, out_features)
        if self.bias:
            out += self.params["bias"]
        return out

    def backward(self, dout):  # dout: (batch, out_features)
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        x, w = self._x, self.params["weight"]
        self.grads["weight"] += x.T @ dout  # (in_features, out_features)
        if self.bias:
            self.grads["bias"] += dout.sum(axis=0)  # (out_features,)
        return dout @ w.T  # (batch, in_features)

    def backward_input(self, dout):
        """B of a zero-bubble pipeline: dx = dout W^T only."""
        if self._x is None:
            raise RuntimeError("Linear.backward_input called before forward")
        return dout @ self.params["weight"].T

    def backward_weight(self, dout):
        """W of a zero-bubble pipeline: dW += x^T dout, db += sum(dout)."""
        self.grads["weight"] += self._x.T @ dout
        if self.bias:
            self.grads["bias"] += dout.sum(axis=0)

    def flops_per_sample(self, backward=True):
        mac = self.in_features * self.out_features
        fwd = 2 * mac + (self.out_features if self.bias else 0)  # x @ W, + b
        bwd = 4 * mac + (self.out_features if self.bias else 0)  # dx = dout W^T, dW = x^T dout, db
        return fwd + (bwd if backward else 0)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias})"


class ReLU(Layer):
    """``max(x, 0)``; its gradient passes where x > 0 (0 at x == 0, as PyTorch)."""

    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, dout):
        return dout * self._mask

    def flops_per_sample(self, backward=True):
        return 0  # comparisons, not counted


class GELU(Layer):
    """GELU, tanh approximation (Hendrycks and Gimpel 2016; GPT-2's ``gelu_new``):

    ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``.
    """

    C = math.sqrt(2.0 / math.pi)
    K = 0.044715

    def forward(self, x):
        xp = array_module(x)
        t = xp.tanh(self.C * (x + self.K * x ** 3))
        self._x, self._t = x, t
        return 0.5 * x * (1.0 + t)

    def backward(self, dout):
        x, t = self._x, self._t
        du_dx = self.C * (1.0 + 3.0 * self.K * x * x)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)

    def flops_per_sample(self, backward=True):
        return 0  # elementwise; small next to the matmuls


class Tanh(Layer):
    """``tanh(x)``; derivative ``1 - tanh(x)^2``."""

    def forward(self, x):
        self._y = array_module(x).tanh(x)
        return self._y

    def backward(self, dout):
        return dout * (1.0 - self._y * self._y)


ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "tanh": Tanh}


@fused("softmax_cross_entropy")
def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits: (batch, num_classes), or (..., num_classes) with labels (...) (a language
    model's (batch, seq, vocab) against (batch, seq): the mean over every token);
    labels: integers in [0, num_classes).
    Returns ``(loss, dlogits)``: loss a Python float, the mean over the batch
    (PyTorch's ``F.cross_entropy``), and ``dlogits = (softmax(logits) - onehot) / batch``,
    shaped like logits (on shape-only arrays, mlscale.meta, the loss is nan: there are no
    values, though every op is still done and counted). Uses the log-sum-exp shift, so large logits do not overflow;
    16-bit logits are handled in float32 and dlogits returned in their dtype.
    """
    xp = array_module(logits, labels)
    if logits.ndim < 2:
        raise ValueError(f"softmax_cross_entropy: logits must be (batch, num_classes), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"softmax_cross_entropy: labels must be {tuple(logits.shape[:-1])} to match logits "
                         f"{tuple(logits.shape)}, got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy: labels must be integers, got dtype {labels.dtype}: "
                        f"use y.astype(np.int64)")
    shape, k = logits.shape, logits.shape[-1]
    logits, labels = logits.reshape(-1, k), labels.reshape(-1)
    n = logits.shape[0]
    if n == 0:
        raise ValueError("softmax_cross_entropy: empty batch")
    shape_only = is_shape_only(xp)  # mlscale.meta: no values to check, and no loss value
    if not shape_only and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}), got min {int(labels.min())}, "
                         f"max {int(labels.max())}: the model's last layer needs one output per class")
    out_dtype = logits.dtype
    if logits.dtype.itemsize < 4:
        logits = logits.astype("float32")
    shifted = logits - logits.max(axis=1, keepdims=True)  # (batch, num_classes)
    exp = xp.exp(shifted)
    sumexp = exp.sum(axis=1, keepdims=True)  # (batch, 1)
    rows = xp.arange(n)
    logp_true = shifted[rows, labels] - xp.log(sumexp[:, 0])  # (batch,)
    loss = float("nan") if shape_only else -float(logp_true.mean())  # shape-only: the mean is computed, not read
    dlogits = exp / sumexp  # softmax, (batch, num_classes)
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return loss, dlogits.astype(out_dtype, copy=False).reshape(shape)


__all__ = ["Layer", "Linear", "ReLU", "GELU", "Tanh", "ACTIVATIONS", "softmax_cross_entropy"]
