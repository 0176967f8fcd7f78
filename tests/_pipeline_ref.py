"""The single-device oracle the pipeline tests compare with (test_parallel_pipeline.py,
test_pp_train.py): the whole MLP on one device, Adam on the full batch."""
import numpy as np

from mlscale import nn


def pipeline_data(sizes, batch=12, seed=0):
    """A batch ``(X, y)`` for an MLP of layer ``sizes``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, sizes[0])), rng.integers(0, sizes[-1], batch)


def single_device_steps(sizes, X, y, steps):
    """The oracle: the whole model on one device, Adam on the full batch. Returns the
    model (its final params) and the loss and gradients of every step."""
    ref = nn.MLP(sizes, activation="gelu", dtype=np.float64, seed=1)
    opt = nn.Adam(ref.params, lr=0.01, impl="reference")
    losses, grads = [], []
    for _ in range(steps):
        losses.append(ref.loss_and_grad(X, y))
        grads.append(ref.grads.copy())
        opt.step(ref.grads)
    return ref, losses, grads
