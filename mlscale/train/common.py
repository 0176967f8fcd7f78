"""What every synchronizer shares: modelled compute, model checks, the run's history."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..comm.errors import CommError


@dataclass
class History:
    """What one rank saw during training (virtual times on sim, wall times elsewhere)."""

    losses: list = field(default_factory=list)  # local loss per step
    clocks: list = field(default_factory=list)  # comm.clock after each step
    staleness: list = field(default_factory=list)  # parameter server: per applied gradient
    staleness_by_worker: dict = field(default_factory=dict)  # worker rank -> its gradients' staleness
    updates: int = 0  # optimizer steps this rank applied (servers: gradients applied)
    compute_time: float = 0.0
    role: str = "worker"

    @property
    def time(self):
        return self.clocks[-1] if self.clocks else 0.0

    @property
    def comm_share(self):
        """Fraction of this rank's time not spent in declared compute (sim)."""
        return 1.0 - self.compute_time / self.time if self.time > 0 else 0.0


def model_checksum(model):
    """A short digest of the parameters' bytes."""
    params = model.params
    host = params.get() if hasattr(params, "get") else params
    return hashlib.sha256(np.ascontiguousarray(host).tobytes()).hexdigest()[:16]


def check_same_model(comm, model):
    """Raise on every rank if the ranks' models differ (one all-gather of a digest).
    Data parallel training silently diverges otherwise."""
    digest = np.frombuffer(bytes.fromhex(model_checksum(model)), dtype=np.uint8)
    sizes = comm.all_gather(np.array([model.num_params], dtype=np.int64))
    if len(set(sizes.tolist())) > 1:
        raise CommError(
            f"rank {comm.rank}: the ranks' models have different sizes {sizes.tolist()}: "
            "build the same architecture on every rank"
        )
    all_digests = comm.all_gather(digest).reshape(comm.world_size, -1)
    differ = [r for r in range(comm.world_size) if not np.array_equal(all_digests[r], all_digests[0])]
    if differ:
        raise CommError(
            f"rank {comm.rank}: the models of rank(s) {differ} differ from rank 0's at the start "
            "(parameter checksums disagree): build every rank's model with the same seed, or call "
            "mlscale.train.broadcast_params(comm, model) first"
        )


def broadcast_params(comm, model, root=0):
    """Copy root's parameters to every rank."""
    model.params[...] = comm.broadcast(model.params, root=root)


class Stepper:
    """Forward + backward on a batch, with the compute declared to the engine: the
    forward pass at once, the backward pass layer by layer (so a bucket's all-reduce can
    start while the layers below are still computing)."""

    def __init__(self, comm, model):
        self.comm = comm
        self.model = model
        layers = model.layers
        self.fwd = [lay.flops_per_sample(backward=False) for lay in layers]
        self.bwd = [lay.flops_per_sample(backward=True) - f for lay, f in zip(layers, self.fwd)]
        self.compute_time = 0.0

    def _charge(self, flops, label):
        if flops > 0:
            self.comm.compute(flops=flops, label=label)  # virtual time on sim; real engines: no-op

    def loss_and_grad(self, xb, yb, zero_grad=True, on_bucket_ready=None, buckets=None):
        """Forward and backward on (xb, yb); returns the loss. ``compute_time`` grows by
        the time it took on ``comm.clock``: modelled on sim, the wall clock elsewhere
        (where a bucket's all-reduce started during backward runs at once, and counts)."""
        t0 = self.comm.clock
        loss = self._loss_and_grad(xb, yb, zero_grad, on_bucket_ready, buckets)
        self.compute_time += self.comm.clock - t0
        return loss

    def _loss_and_grad(self, xb, yb, zero_grad, on_bucket_ready, buckets):
        n = len(xb)
        self._charge(n * sum(self.fwd), "forward")
        charged = set()

        def on_grad(name, _view):
            layer = int(name.split(".")[0])
            if layer not in charged:  # this layer's backward just ran
                charged.add(layer)
                self._charge(n * self.bwd[layer], "backward")

        kw = {"on_grad_ready": on_grad}
        if buckets is not None:
            kw.update(buckets=buckets, on_bucket_ready=on_bucket_ready)
        loss = self.model.loss_and_grad(xb, yb, zero_grad=zero_grad, **kw)
        rest = sum(f for i, f in enumerate(self.bwd) if i not in charged)  # layers without params
        self._charge(n * rest, "backward")
        return float(loss)
