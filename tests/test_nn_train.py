"""End to end: an MLP trained with single-process SGD on the real 8x8 digits reaches >= 95%."""
import time

import numpy as np
import pytest

from mlscale.data import batches, load_digits
from mlscale.nn import MLP, SGD

pytest.importorskip("sklearn", reason="load_digits needs scikit-learn (pip install scikit-learn)")


def test_mlp_sgd_on_digits_reaches_95_percent_in_seconds():
    X_train, y_train, X_test, y_test = load_digits(test_fraction=0.25, seed=0)
    model = MLP([64, 128, 10], seed=0)
    opt = SGD(model, lr=0.1, momentum=0.9)
    assert model.accuracy(X_test, y_test) < 0.3          # untrained: near chance (10 classes)
    epochs, losses = 12, []
    start = time.perf_counter()
    for epoch in range(epochs):
        opt.lr = 0.1 * 0.5 * (1 + np.cos(np.pi * epoch / epochs))   # cosine decay
        epoch_loss = []
        for Xb, yb in batches(X_train, y_train, batch_size=32, seed=0, epoch=epoch):
            epoch_loss.append(model.loss_and_grad(Xb, yb))   # zero_grad, forward, loss, backward
            opt.step()
        losses.append(np.mean(epoch_loss))
    seconds = time.perf_counter() - start
    acc = model.accuracy(X_test, y_test)
    print(f"digits: test accuracy {acc:.3f} after {epochs} epochs in {seconds:.2f} s")
    assert acc >= 0.95
    assert losses[-1] < 0.2 * losses[0]
    assert seconds < 60.0, f"training took {seconds:.1f} s; it should take a few seconds on 2 cores"
