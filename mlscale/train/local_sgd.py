"""Local SGD / model averaging: each rank takes H optimizer steps on its own data, then
the ranks average their parameters with one all-reduce (Stich 2019; Lin et al. 2020).
H = 1 with plain SGD equals synchronous data parallelism; larger H talks H times less
and lets the models drift apart in between: the trade-off notebook 05 measures."""
from __future__ import annotations

from .common import Stepper


class LocalSGD:
    def __init__(self, H=1, algorithm="ring", average_optimizer_state=False):
        if int(H) != H or H < 1:
            raise ValueError(f"LocalSGD: H (local steps between averages) must be >= 1, got {H!r}")
        self.H = int(H)
        self.algorithm = algorithm
        self.average_optimizer_state = average_optimizer_state
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
        comm.all_reduce(model.params, op="mean", algorithm=self.algorithm, out=model.params)
        if self.average_optimizer_state:
            for buf in optimizer.state_dict().values():
                if hasattr(buf, "ndim") and buf.ndim == 1 and buf.shape == model.params.shape:
                    comm.all_reduce(buf, op="mean", algorithm=self.algorithm, out=buf)
