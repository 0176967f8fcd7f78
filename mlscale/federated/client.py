"""ClientUpdate: what a client does with the global model in one round.

FedAvg (McMahan et al. 2017, Algorithm 1): start from the global params w_t, run E
epochs of minibatch SGD with batch B over the local data (u = E n_k / B steps; B = None
means B = infinity, one full-batch step per epoch, and E = 1, B = None is FedSGD), and
return the update w - w_t with n_k. FedProx (Li et al. 2020, MLSys): the local
objective gets the proximal term (mu / 2) ||w - w_t||^2, i.e. mu (w - w_t) is added to
every gradient; mu = 0 is FedAvg, bit for bit.
"""
from __future__ import annotations

import numpy as np


def batch_seed(seed, round, client):
    """The seed of a client's batch order in a round: the same on every engine."""
    return int(np.random.SeedSequence([int(seed), int(round), int(client)]).generate_state(1)[0])


def check_local(epochs, batch_size, lr, mu):
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs E={epochs!r} must be an integer >= 1 (FedSGD: E=1, batch_size=None)")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                   or batch_size < 1):
        raise ValueError(f"batch_size B={batch_size!r} must be an integer >= 1, or None for B = infinity")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0")
    if mu is not None and not mu >= 0:
        raise ValueError(f"FedProx mu={mu!r} must be >= 0 (0 is FedAvg)")


def local_update(model, global_params, X, y, epochs=1, batch_size=None, lr=0.1, mu=None, seed=0,
                 stepper=None, impl="auto"):
    """Train ``model`` from ``global_params`` on (X, y); returns (update, num_examples).

    update = w - w_t (a new array, the model's dtype). mu: None (FedAvg) or the FedProx
    coefficient. stepper: a ``mlscale.train.common.Stepper`` that declares the FLOPs to
    the engine (virtual time on sim); None computes without telling anyone.
    """
    from ..data import batches
    from ..nn import SGD

    check_local(epochs, batch_size, lr, mu)
    n = len(X)
    if n == 0:
        raise ValueError("local_update: this client holds no examples")
    model.params[...] = global_params
    opt = SGD(model, lr=lr, impl=impl)
    B = n if batch_size is None else int(batch_size)
    for epoch in range(int(epochs)):
        for xb, yb in batches(X, y, B, seed=seed, epoch=epoch):
            if stepper is not None:
                stepper.loss_and_grad(xb, yb)
            else:
                model.loss_and_grad(xb, yb)
            if mu is not None:  # FedProx: grad of (mu/2)||w - w_t||^2
                model.grads += mu * (model.params - global_params)
            opt.step()
    return model.params - global_params, n
