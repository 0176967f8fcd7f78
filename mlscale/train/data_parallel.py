"""Synchronous data parallelism: every rank holds the whole model, computes gradients
on its share of the global batch, and the gradients are averaged with all-reduce
before every rank takes the same optimizer step.

Two versions, naive first (STYLE: picotron's DataParallelNaive, then the bucketed one):

- ``DataParallel(bucket_bytes=None)``: one all-reduce per parameter tensor, after the
  whole backward pass. Simple; pays the latency alpha once per tensor.
- ``DataParallel(bucket_bytes=...)``: gradients grouped into buckets (PyTorch DDP,
  Li et al. VLDB 2020), one all-reduce per bucket; ``overlap=True`` starts each
  bucket's all-reduce on the communication stream as soon as backward has filled it,
  so communication hides behind the backward pass of the layers below.

``accumulate=k``: k micro-batches per step, gradients summed locally, one
communication per step (gradient accumulation).
"""
from __future__ import annotations

from .common import Stepper


class DataParallel:
    def __init__(self, bucket_bytes=None, overlap=False, accumulate=1, algorithm="ring"):
        if overlap and not bucket_bytes:
            raise ValueError("overlap=True needs buckets: pass bucket_bytes= (e.g. 25 * 2**20, DDP's default)")
        if int(accumulate) != accumulate or accumulate < 1:
            raise ValueError(f"accumulate must be a whole number >= 1, got {accumulate!r}")
        self.bucket_bytes = bucket_bytes
        self.overlap = overlap
        self.accumulate = int(accumulate)
        self.algorithm = algorithm

    @property
    def name(self):
        if not self.bucket_bytes:
            return "data parallel (one all-reduce per tensor)"
        return f"data parallel ({self.bucket_bytes} B buckets{', overlapped' if self.overlap else ''})"

    def _all_reduce(self, comm, g):
        comm.all_reduce(g, op="mean", algorithm=self.algorithm, out=g)

    def step(self, comm, model, optimizer, stepper: Stepper, micro_batches):
        """One optimizer step over ``micro_batches`` (a list of (X, y), this rank's share)."""
        k = len(micro_batches)
        buckets = model.buckets(self.bucket_bytes) if self.bucket_bytes else None
        pending = []
        loss = 0.0
        def start_bucket(bucket, g):  # backward has just filled this bucket: send it now
            if k > 1:
                g *= 1.0 / k
            pending.append(comm.start(lambda c, v: self._all_reduce(c, v), g))

        for i, (xb, yb) in enumerate(micro_batches):
            overlap_now = self.overlap and i == k - 1  # only the last micro-batch's grads are final
            loss += stepper.loss_and_grad(
                xb, yb, zero_grad=(i == 0),
                buckets=buckets if overlap_now else None,
                on_bucket_ready=start_bucket if overlap_now else None,
            )
        if self.overlap:
            for req in pending:
                req.wait()
        else:
            if k > 1:
                model.grads *= 1.0 / k
            if buckets is None:
                for g in model.named_grads().values():  # the naive way: one per tensor
                    self._all_reduce(comm, g.reshape(-1))
            else:
                for b in buckets:
                    self._all_reduce(comm, model.grads[b.slice])
        optimizer.step()
        return loss / k
