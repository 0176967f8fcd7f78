"""Pipeline parallelism: a stack of layers cut into p stages, one per rank, fed with
micro-batches (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021).

    def program(comm):
        model = nn.MLP([64, 64, 64, 64, 10], seed=0, dtype=np.float64)   # same on every rank
        pipe = PipelineParallel(comm, model, num_microbatches=8, schedule="1f1b")
        opt = nn.Adam(pipe.params, lr=1e-3)     # this stage's slice of the flat params
        loss = pipe.step(X, y)                  # the loss on the last stage, None elsewhere
        opt.step(pipe.grads)

Rank s keeps layers ``partition_layers(model.layers, p)[s]``: contiguous, so its
parameters are one contiguous slice of the model's flat buffer (``pipe.params`` and
``pipe.grads`` are views into it). The batch is cut into m micro-batches
(``np.array_split``); the last stage weighs micro-batch j's mean loss by its share of
the batch, so the summed gradients are exactly the gradient of the full-batch mean
loss: the same as one device, up to rounding.

Each stage runs its ops in the order of :mod:`pp_schedule` (the same lists the Gantt
charts draw). A micro-batch's activations stay stashed from its forward to its
backward: ``stage.peak_in_flight`` and ``stage.peak_stash_bytes`` record the most at
once (GPipe: m; 1F1B: at most p - s). On ``sim``, ``times=(t_fwd, t_bwd)`` charges
virtual seconds per micro-batch (default: the layers' FLOPs at the modelled rate), so
the simulator's clocks show the bubble.
"""
from __future__ import annotations

import copy

import numpy as np

from ..nn.layers import softmax_cross_entropy
from .pp_comm import PipeComm
from .pp_schedule import SCHEDULES, stage_ops


def partition_layers(layers, num_stages):
    """Cut ``layers`` into ``num_stages`` contiguous ``(start, stop)`` ranges.

    A block is a layer with parameters (a Linear) plus the parameter-free layers after
    it (its activation); blocks are dealt out as ``np.array_split`` does (the first
    stages get one more when they do not divide). Needs at least one block per stage."""
    if isinstance(num_stages, bool) or not isinstance(num_stages, (int, np.integer)) or num_stages < 1:
        raise ValueError(f"num_stages={num_stages!r} must be a whole number >= 1")
    starts = [i for i, layer in enumerate(layers) if layer.param_shapes()]
    if not starts:
        starts = [0]
    starts[0] = 0  # leading parameter-free layers join the first block
    if num_stages > len(starts):
        raise ValueError(f"a pipeline of {num_stages} stages needs at least {num_stages} layers with parameters, "
                         f"the model has {len(starts)}: use num_stages <= {len(starts)} (world_size) or a deeper model")
    bounds = starts + [len(layers)]
    sizes = [len(c) for c in np.array_split(np.arange(len(starts)), num_stages)]
    out, b = [], 0
    for k in sizes:
        out.append((bounds[b], bounds[b + k]))
        b += k
    return out


class PipelineStage:
    """This rank's layers of ``model``, with a stash of per-micro-batch activations."""

    def __init__(self, model, stage, num_stages):
        self.stage, self.num_stages = stage, num_stages
        self.start, self.stop = partition_layers(model.layers, num_stages)[stage]
        self.layers = model.layers[self.start:self.stop]
        mine = [s for s in model.slots if self.start <= s.layer < self.stop]
        lo = mine[0].start if mine else 0
        hi = mine[-1].stop if mine else 0
        self.param_range = (lo, hi)
        self.params, self.grads = model.params[lo:hi], model.grads[lo:hi]  # views
        self.stash = {}  # microbatch -> the layer copies holding its activations
        self.peak_in_flight = 0
        self.stash_bytes = self.peak_stash_bytes = 0
        self._bytes = {}
        self._pending_w = {}  # microbatch -> [(layer copy, its d(output))]: B done, W not yet

    def forward(self, x, microbatch):
        """Run my layers on micro-batch ``microbatch``; keep its activations for backward."""
        if microbatch in self.stash:
            raise RuntimeError(f"stage {self.stage}: forward of micro-batch {microbatch} twice before its backward")
        copies, nbytes = [], 0
        for layer in self.layers:
            c = copy.copy(layer)  # shares the parameter views; its cache is this micro-batch's own
            nbytes += int(x.nbytes)
            x = c.forward(x)
            copies.append(c)
        self._keep(microbatch, copies, nbytes)
        return x

    def _keep(self, microbatch, copies, nbytes):
        """Stash micro-batch ``microbatch``'s layer copies (``nbytes`` of inputs) for its backward."""
        self.stash[microbatch] = copies
        self._bytes[microbatch] = nbytes
        self.stash_bytes += nbytes
        self.peak_in_flight = max(self.peak_in_flight, len(self.stash))
        self.peak_stash_bytes = max(self.peak_stash_bytes, self.stash_bytes)

    def backward(self, dout, microbatch):
        """Backward of ``microbatch`` through my layers, ADDING into the grads; frees its stash."""
        if microbatch not in self.stash:
            raise RuntimeError(f"stage {self.stage}: backward of micro-batch {microbatch} before its forward")
        for c in reversed(self.stash.pop(microbatch)):
            dout = c.backward(dout)
        self.stash_bytes -= self._bytes.pop(microbatch)
        return dout

    def backward_input(self, dout, microbatch):
        """B of a zero-bubble schedule: d(input) of ``microbatch`` only; its activations
        stay stashed, with each layer's d(output), until :meth:`backward_weight`."""
        if microbatch not in self.stash:
            raise RuntimeError(f"stage {self.stage}: backward of micro-batch {microbatch} before its forward")
        if microbatch in self._pending_w:
            raise RuntimeError(f"stage {self.stage}: backward of micro-batch {microbatch} twice")
        keep = []
        for c in reversed(self.stash[microbatch]):
            keep.append((c, dout))
            dout = c.backward_input(dout)
        self._pending_w[microbatch] = keep
        return dout

    def backward_weight(self, microbatch):
        """W of a zero-bubble schedule: ADD the weight grads of ``microbatch``; frees its stash."""
        if microbatch not in self._pending_w:
            raise RuntimeError(f"stage {self.stage}: W of micro-batch {microbatch} before its B")
        for c, dout in self._pending_w.pop(microbatch):
            c.backward_weight(dout)
        del self.stash[microbatch]
        self.stash_bytes -= self._bytes.pop(microbatch)

    def flops(self, n, backward):
        f = sum(layer.flops_per_sample(backward=False) for layer in self.layers)
        if backward:
            f = sum(layer.flops_per_sample(backward=True) for layer in self.layers) - f
        return n * f


class PipelineParallel:
    """Train ``model`` (an ``nn.Sequential``/``nn.MLP`` built identically on every rank)
    as a pipeline of ``comm.world_size`` stages.

    schedule          "gpipe" or "1f1b"
    num_microbatches  m >= 1 (and at most the batch size)
    times             (t_fwd, t_bwd) virtual seconds per micro-batch per stage, or None
                      to charge the stage's FLOPs (``NetworkModel.flops``)
    blocking          True: blocking sends (the naive way; 1F1B then deadlocks on
                      activations above the eager limit). Default: non-blocking.
    """

    def __init__(self, comm, model, num_microbatches, schedule="1f1b", times=None, blocking=False):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown pipeline schedule {schedule!r}: use one of {SCHEDULES}")
        if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, (int, np.integer)) \
                or num_microbatches < 1:
            raise ValueError(f"num_microbatches={num_microbatches!r} must be a whole number >= 1")
        if times is not None and (len(times) != 2 or min(times) < 0):
            raise ValueError(f"times={times!r} must be (t_fwd, t_bwd), seconds >= 0")
        self.comm, self.model, self.schedule = comm, model, schedule
        self.num_microbatches, self.times = int(num_microbatches), times
        self.stage = PipelineStage(model, comm.rank, comm.world_size)
        self.pc = PipeComm(comm, blocking=blocking)
        self.ops = stage_ops(comm.world_size, self.num_microbatches, schedule)[comm.rank]

    @property
    def params(self):
        return self.stage.params

    @property
    def grads(self):
        return self.stage.grads

    def _charge(self, n, op):
        if self.times is not None:
            self.comm.compute(seconds=self.times[op == "B"], label="forward" if op == "F" else "backward")
        else:
            self.comm.compute(flops=self.stage.flops(n, op == "B"), label="forward" if op == "F" else "backward")

    def step(self, X, y):
        """Zero this stage's grads, run the schedule over the batch (X, y); the grads then
        hold d(mean loss over the batch)/d(my params). Returns the loss on the last stage,
        None on the others. Every rank passes the same batch (only the first stage reads
        X, only the last reads y)."""
        m, B = self.num_microbatches, len(X)
        if m > B:
            raise ValueError(f"num_microbatches={m} is more than the batch size {B}: every micro-batch needs "
                             f"at least one example")
        if len(y) != B:
            raise ValueError(f"pipeline step: {B} inputs but {len(y)} labels")
        xp = self.comm.xp
        parts = np.array_split(np.arange(B), m)
        pc, st = self.pc, self.stage
        st.grads[...] = 0
        douts, loss = {}, 0.0
        for op, j in self.ops:
            idx = parts[j]
            if op == "F":
                x = xp.asarray(X[idx], dtype=self.model.dtype) if pc.is_first else pc.recv_forward(j)
                self._charge(len(idx), "F")
                out = st.forward(x, j)  # (micro-batch, features of the next stage)
                if pc.is_last:
                    lj, dlogits = softmax_cross_entropy(out, xp.asarray(y[idx]))
                    w = len(idx) / B  # micro-batch j's share of the full-batch mean
                    loss += w * lj
                    douts[j] = dlogits * w
                else:
                    pc.send_forward(out, j)
            else:
                dout = douts.pop(j) if pc.is_last else pc.recv_backward(j)
                self._charge(len(idx), "B")
                dx = st.backward(dout, j)
                pc.send_backward(dx, j)
        pc.wait_all()
        return loss if pc.is_last else None


__all__ = ["partition_layers", "PipelineStage", "PipelineParallel"]
