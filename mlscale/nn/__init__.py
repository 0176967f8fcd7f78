"""Tiny models for NumPy and CuPy alike, with flat parameter/gradient buffers.

    from mlscale.nn import MLP, SGD
    model = MLP([64, 64, 10], seed=0)
    opt = SGD(model, lr=0.1, momentum=0.9)
    for Xb, yb in mlscale.data.batches(X, y, batch_size=64, seed=0, epoch=0):
        model.loss_and_grad(Xb, yb)
        opt.step()

Layers (``Linear``, ``ReLU``, ``GELU``, ``Tanh``) carry their backward beside their
forward; ``Sequential``/``MLP`` lay every parameter into one flat ``params`` buffer and
every gradient into one flat ``grads`` buffer (see model.py for why). Optimizers are
imported lazily: they call the fused kernels of ``mlscale.ops``.
"""
from ._xp import array_module, is_cupy  # noqa: F401
from .layers import ACTIVATIONS, GELU, Layer, Linear, ReLU, Tanh, softmax_cross_entropy  # noqa: F401
from .model import MLP, Bucket, ParamSlot, Sequential  # noqa: F401
from .optim import SGD, Adam, AdamW, Optimizer  # noqa: F401

__all__ = ["Layer", "Linear", "ReLU", "GELU", "Tanh", "ACTIVATIONS", "softmax_cross_entropy",
           "Sequential", "MLP", "Bucket", "ParamSlot", "SGD", "Adam", "AdamW", "Optimizer",
           "array_module", "is_cupy"]
