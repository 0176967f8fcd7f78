"""Local SGD / model averaging: each rank takes H optimizer steps on its own data, then
the ranks average their parameters with one all-reduce (Stich 2019; Lin et al. 2020).
H = 1 with plain SGD equals synchronous data parallelism; larger H talks H times less
and lets the models drift apart in between: the trade-off notebook 05 measures.

``average_optimizer_state=True`` also averages the optimizer's per-parameter buffers
(SGD's momentum, Adam's m and v): twice the bytes (three times with Adam), and the
ranks restart each period with the same momentum. ``averager=fn`` replaces the
parameter all-reduce by ``fn(comm, model)`` (notebook 05's exercise plugs in there).
:func:`model_disagreement` measures the drift between averages.
"""
from __future__ import annotations

import numpy as np

from .common import Stepper


def model_disagreement(params):
    """Mean squared distance of the ranks' parameter vectors from their average,
    ``1/p sum_r ||x_r - x_bar||^2`` (the consensus distance of Stich 2019 and Kong et
    al. 2021): 0 right after an average, growing until the next. ``params`` is a
    sequence of p flat arrays (or a (p, n) array)."""
    x = np.stack([np.asarray(q.get() if hasattr(q, "get") else q, dtype=np.float64) for q in params])
    if x.ndim != 2:
        raise ValueError(f"model_disagreement: pass p flat parameter vectors, got an array of shape {x.shape}")
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


class LocalSGD:
    def __init__(self, H=1, algorithm="ring", average_optimizer_state=False, averager=None):
        if int(H) != H or H < 1:
            raise ValueError(f"LocalSGD: H (local steps between averages) must be >= 1, got {H!r}")
        if averager is not None and not callable(averager):
            raise TypeError(f"LocalSGD: averager must be a function (comm, model), got {averager!r}")
        self.H = int(H)
        self.algorithm = algorithm
        self.average_optimizer_state = average_optimizer_state
        self.averager = averager
        self._t = 0

    @property
    def name(self):
        return f"local SGD (average every {self.H} steps)"

    def step(self, comm, model, optimizer, stepper: Stepper, micro_batches):
        loss = 0.0
        for i, (xb, yb) in enumerate(micro_batches):
            loss += stepper.loss_and_grad(xb, yb, zero_grad=(i == 0))
        if len(micro_batches) > 1:
            model.grads *= 1.0 / len(micro_batches)
        optimizer.step()
        self._t += 1
        if self._t % self.H == 0:
            self.average(comm, model, optimizer)
        return loss / len(micro_batches)

    def average(self, comm, model, optimizer):
        if self.averager is not None:
            self.averager(comm, model)
        else:
            comm.all_reduce(model.params, op="mean", algorithm=self.algorithm, out=model.params)
        if self.average_optimizer_state:
            # the live buffers (state_dict() returns copies: averaging those changed nothing)
            state = optimizer._state() if hasattr(optimizer, "_state") else optimizer.state_dict()
            for buf in state.values():
                if hasattr(buf, "ndim") and buf.ndim == 1 and buf.shape == model.params.shape:
                    comm.all_reduce(buf, op="mean", algorithm=self.algorithm, out=buf)
