"""D-PSGD: decentralized parallel SGD (Lian et al. 2017), a synchronizer for
:func:`mlscale.train.train`.

No all-reduce and no server: each step every rank computes a gradient on its share of
the batch and mixes its parameters with its neighbors' by one round of gossip
(:mod:`mlscale.decentralized.gossip`). Same total compute as centralized SGD; the
busiest rank sends ``degree`` messages of the model per step instead of the 2(p-1)
of a ring all-reduce, so on a high-latency network a step costs about
``2 * degree * alpha`` instead of ``2 (p - 1) * alpha``. The price: the ranks' models
differ (by about lr / (1 - rho) times the gradient spread) and the average is only
approached.

Two orders of "step" and "gossip":

- ``order="step_then_gossip"`` (adapt then combine): ``x_i <- sum_j W_ij (x_j - lr g_j)``.
  With the complete graph and uniform weights every rank ends each step at the mean of
  the stepped models: exactly synchronous data parallelism with (momentum) SGD.
- ``order="paper"`` (Lian et al. 2017, Algorithm 1): ``x_i <- sum_j W_ij x_j - lr g_i(x_i)``.
  The gradient is taken at the local model before mixing, so the gossip of the
  parameters runs on the communication stream while the gradient is computed
  (``comm.start``): communication hides behind compute.

``local_steps=H, gossip_rounds=k``: H local steps, then k gossip rounds: consensus
learning (Georgopoulos and Hasler 2014), local SGD with gossip instead of all-reduce.
"""
from __future__ import annotations

import numpy as np

from ..decentralized.gossip import Gossip, gossip_round
from .common import Stepper

ORDERS = ("step_then_gossip", "paper")


class DPSGD:
    def __init__(self, topology="ring", mixing=None, order="step_then_gossip", local_steps=1,
                 gossip_rounds=1):
        if order not in ORDERS:
            raise ValueError(f"DPSGD: order={order!r}; use 'step_then_gossip' (adapt then combine) or "
                             "'paper' (Lian et al. 2017: mix, and step with the gradient at the local model)")
        for what, v in (("local_steps", local_steps), ("gossip_rounds", gossip_rounds)):
            if int(v) != v or v < 1:
                raise ValueError(f"DPSGD: {what}={v!r} must be a whole number >= 1")
        if order == "paper" and (local_steps != 1 or gossip_rounds != 1):
            raise ValueError("DPSGD: order='paper' is one gradient and one gossip round per step; "
                             "use order='step_then_gossip' with local_steps / gossip_rounds")
        self.topology = topology
        self.mixing = mixing
        self.order = order
        self.local_steps = int(local_steps)
        self.gossip_rounds = int(gossip_rounds)
        self._plan = None
        self._step = 0       # optimizer steps taken
        self._round = 0      # gossip rounds taken (time-varying topologies)

    @property
    def name(self):
        topo = getattr(self.topology, "name", self.topology)
        extra = f", {self.gossip_rounds} rounds every {self.local_steps} steps" \
            if (self.local_steps, self.gossip_rounds) != (1, 1) else ""
        return f"D-PSGD ({topo}{extra})"

    def plan(self, comm):
        if self._plan is None:
            self._plan = Gossip(self.topology, comm.world_size, self.mixing)
        return self._plan

    def _gossip(self, comm, x, out):
        gossip_round(comm, x, self.plan(comm), self._round, out=out)
        self._round += 1

    def step(self, comm, model, optimizer, stepper: Stepper, micro_batches):
        plan = self.plan(comm)
        k = len(micro_batches)
        if self.order == "paper":
            mixed = model.params.copy()  # gossip the current model while computing the gradient
            t = self._round
            req = comm.start(lambda c, x: gossip_round(c, x, plan, t, out=x), mixed)
            self._round += 1
        loss = 0.0
        for i, (xb, yb) in enumerate(micro_batches):
            loss += stepper.loss_and_grad(xb, yb, zero_grad=(i == 0))
        if k > 1:
            model.grads *= 1.0 / k
        if self.order == "paper":
            req.wait()
            model.params[...] = mixed  # x <- W x, then x <- x - lr g(old x)
            optimizer.step()
        else:
            optimizer.step()
            self._step += 1
            if self._step % self.local_steps == 0:
                for _ in range(self.gossip_rounds):
                    self._gossip(comm, model.params, out=model.params)
        return loss / k


def consensus_distance(comm, model):
    """sqrt(mean_i ||x_i - xbar||^2): how far the ranks' models are apart (a diagnostic,
    two all-reduces: measure traffic before calling it)."""
    mean = comm.all_reduce(model.params, op="mean")
    d2 = comm.all_reduce(np.array([float(((model.params - mean) ** 2).sum())]), op="mean")
    return float(np.sqrt(d2[0]))


def average_model(comm, model):
    """Replace every rank's parameters by their average (one all-reduce): how D-PSGD's
    result is usually evaluated."""
    comm.all_reduce(model.params, op="mean", out=model.params)
    return model
