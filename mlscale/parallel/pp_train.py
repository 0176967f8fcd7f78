"""Training with any pipeline schedule: GPipe, 1F1B, interleaved 1F1B (v model chunks
per rank) and ZB-H1 (the backward split into B and W). The schedules are the lists of
:mod:`pp_schedule` and :mod:`pp_modern`; this runs them on a Communicator.

    def program(comm):
        model = nn.MLP([16] * 9 + [4], seed=0, dtype=np.float64)        # 8 Linear layers
        pipe = ScheduledPipeline(comm, model, num_microbatches=4, schedule="interleaved", num_chunks=2)
        loss = pipe.step(X, y)            # on the rank holding the last chunk, else None
        # pipe.chunks[c].params / .grads: views of chunk c's slice of the flat buffers

With p ranks and v chunks the model is cut into p v pieces (``partition_layers``);
rank s holds pieces s, s + p, ..., s + (v - 1) p (Megatron's layout), so a micro-batch
goes round the ranks v times and rank p - 1 sends piece p - 1's output back to rank 0.
Activations of micro-batch j entering piece g travel on tag 2 (j p v + g), gradients on
tag 2 (j p v + g) + 1; sends are non-blocking, waited for at the end of the step (as
:class:`~mlscale.parallel.pp_comm.PipeComm`). The gradients equal one device's on the
full batch, up to rounding: the schedule changes when each is added, never what.

``times=(t_fwd, t_bwd)`` (or ``(t_fwd, t_bwd, t_w)`` for a split schedule: B then costs
t_bwd, W t_w) charges virtual seconds per micro-batch for a whole stage, 1/v of it per
chunk; by default the layers' FLOPs (a split backward: half in B, half in W, as a
Linear's dx and dW each cost 2 in out MACs).
"""
from __future__ import annotations

import numpy as np

from ..nn.layers import softmax_cross_entropy
from .pipeline import PipelineStage
from .pp_modern import _norm, interleaved_schedule, zb_h1_schedule
from .pp_schedule import stage_ops

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")


def schedule_ops(schedule, p, m, v=1):
    """Per stage, the ``(op, microbatch, chunk)`` lists of a named schedule."""
    if schedule in ("gpipe", "1f1b"):
        if v != 1:
            raise ValueError(f"schedule={schedule!r} runs one chunk per rank: use num_chunks=1, or "
                             "schedule='interleaved' for more")
        return [[(op, j, 0) for op, j in stage] for stage in stage_ops(p, m, schedule)]
    if schedule == "interleaved":
        return interleaved_schedule(p, m, v)
    if schedule == "zb-h1":
        if v != 1:
            raise ValueError("schedule='zb-h1' runs one chunk per rank: use num_chunks=1")
        return zb_h1_schedule(p, m)
    raise ValueError(f"unknown pipeline schedule {schedule!r}: use one of {SCHEDULES}")


class ScheduledPipeline:
    """Train ``model`` (built identically on every rank) as ``comm.world_size`` ranks x
    ``num_chunks`` chunks, running ``schedule`` (a name of SCHEDULES, or per-stage op lists)."""

    def __init__(self, comm, model, num_microbatches, schedule="1f1b", num_chunks=1, times=None):
        p, v, m = comm.world_size, int(num_chunks), int(num_microbatches)
        ops = schedule_ops(schedule, p, m, v) if isinstance(schedule, str) else schedule
        if len(ops) != p:
            raise ValueError(f"the schedule has op lists for {len(ops)} stages, the communicator {p} ranks")
        self.ops = _norm([ops[comm.rank]])[0]
        self.split = any(op == "W" for op, _, _ in self.ops)
        if times is not None and len(times) != (3 if self.split else 2):
            raise ValueError(f"times={times!r}: give (t_fwd, t_bwd{', t_w' if self.split else ''}) in seconds")
        self.comm, self.model, self.p, self.v, self.m, self.times = comm, model, p, v, m, times
        self.P = p * v
        self.chunks = [PipelineStage(model, c * p + comm.rank, self.P) for c in range(v)]
        self.pending = []
        self.nbytes = {"activations": 0, "gradients": 0}  # sent by this rank

    @property
    def param_ranges(self):
        return [c.param_range for c in self.chunks]

    def _charge(self, chunk, n, op):
        label = {"F": "forward", "B": "backward", "W": "weight grad"}[op]
        if self.times is not None:
            t = self.times[{"F": 0, "B": 1, "W": 2}[op]] / self.v
            self.comm.compute(seconds=t, label=label)
            return
        f = chunk.flops(n, op != "F")
        self.comm.compute(flops=f / 2 if self.split and op != "F" else f, label=label)

    def _send(self, x, g, tag, what):
        self.nbytes[what] += int(x.nbytes)
        with self.comm.label(f"pp/{what}"):
            self.pending.append(self.comm.isend(x, g % self.p, tag=tag))

    def step(self, X, y):
        """Zero the grads of my chunks, run my op list over the batch; returns the loss on
        the rank holding the last chunk, None on the others."""
        B, m, P = len(X), self.m, self.P
        if m > B:
            raise ValueError(f"num_microbatches={m} is more than the batch size {B}")
        if len(y) != B:
            raise ValueError(f"pipeline step: {B} inputs but {len(y)} labels")
        xp, parts = self.comm.xp, np.array_split(np.arange(B), m)
        for c in self.chunks:
            c.grads[...] = 0
        douts, loss = {}, 0.0
        for op, j, c in self.ops:
            g, chunk, idx = c * self.p + self.comm.rank, self.chunks[c], parts[j]
            if op == "F":
                if g == 0:
                    x = xp.asarray(X[idx], dtype=self.model.dtype)
                else:
                    x = self.comm.recv((g - 1) % self.p, tag=2 * (j * P + g))
                self._charge(chunk, len(idx), "F")
                out = chunk.forward(x, j)
                if g == P - 1:
                    lj, dlogits = softmax_cross_entropy(out, xp.asarray(y[idx]))
                    loss += len(idx) / B * lj
                    douts[j] = dlogits * (len(idx) / B)
                else:
                    self._send(out, g + 1, 2 * (j * P + g + 1), "activations")
            elif op == "B":
                dout = douts.pop(j) if g == P - 1 else self.comm.recv((g + 1) % self.p, tag=2 * (j * P + g) + 1)
                self._charge(chunk, len(idx), "B")
                dx = chunk.backward_input(dout, j) if self.split else chunk.backward(dout, j)
                if g > 0:
                    self._send(dx, g - 1, 2 * (j * P + g - 1) + 1, "gradients")
            elif op == "W":
                self._charge(chunk, len(idx), "W")
                chunk.backward_weight(j)
            else:
                raise ValueError(f"unknown op {op!r} in the schedule: use 'F', 'B' or 'W'")
        for r in self.pending:
            r.wait()
        self.pending.clear()
        return loss if self.P - 1 in [c * self.p + self.comm.rank for c in range(self.v)] else None


__all__ = ["SCHEDULES", "ScheduledPipeline", "schedule_ops"]
