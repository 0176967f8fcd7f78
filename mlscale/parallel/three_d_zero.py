"""ZeRO-2 and ZeRO-3 on the data-parallel dim of 3D training: a pipeline stage whose
layers' gradients (stage 2) and parameters (stage 3) are sharded over ``mesh["dp"]``.

Rajbhandari et al. 2020 (ZeRO, sections 5.2-5.3); PyTorch FSDP (Zhao et al. 2023);
torchtitan composes FSDP2 with pipeline parallelism in the same places (one FSDP unit per
transformer block of the stage, over the dp mesh dim).

Why not ``FSDP`` (fsdp.py) itself: FSDP owns the whole forward-loss-backward loop of a
model, unit after unit, one batch at a time. A pipeline stage runs its layers once per
micro-batch, in 1F1B order, between a recv and a send, and keeps one copy of each layer
per micro-batch in flight (``PipelineStage``). So this file is the minimal adapter:
:class:`ShardedStage` is a ``PipelineStage`` whose ``forward``/``backward`` of one
micro-batch gather / reduce-scatter layer by layer, and it reuses FSDP's pieces
(``make_units``: one unit per layer, my ``np.array_split`` chunk of each;
``MemoryLedger``; the ZeRO formulas of zero.py) rather than copying them.

Per micro-batch, for each unit (layer) u of my stage, over the dp group of p ranks:

=====  ===================================================================
stage  what happens (N_u = the unit's elements)
=====  ===================================================================
2      params replicated; backward of u writes its full grads into a fresh
       buffer, which is reduce-scattered (mean) at once and ADDED into my
       grad shard, then freed. After the step: Adam on my shard of each unit,
       all-gather of the unit's params (as ZeRO-1).
3      params sharded: all-gather u just before its forward, free after;
       all-gather again just before its backward, free after; grads as stage 2.
=====  ===================================================================

Bytes on the dp dim per step, all ranks together (ring; m micro-batches, N = sum N_u,
times the item size): stage 0 (all-reduce) and stage 1 (reduce-scatter + all-gather)
2(p-1)N; stage 2 (m + 1)(p-1)N; stage 3 3m(p-1)N. With m = 1 stage 2 equals stage 1 and
stage 3 is 1.5x; with m > 1 the per-micro-batch reduce-scatters (and stage 3's gathers)
repeat m times: the price of never holding a stage's full gradients. That is why
DeepSpeed's PipelineEngine refuses ZeRO stage >= 2 ("ZeRO-2 and ZeRO-3 are incompatible
with pipeline parallelism"), and why torchtitan, under PP, by default does not reshard
FSDP's parameters after forward (no per-micro-batch all-gathers; not done here).
``dp_wire_bytes`` gives each rank's exact bytes.

``prefetch`` (stage 3) and ``overlap`` (stages 2-3), both off by default (then the
gathers and reduce-scatters are synchronous, as before these options existed), do what
fsdp.py does, inside each forward and backward of one micro-batch: while layer i
computes, layer i+1's all-gather (forward; layer i-1's in the backward) runs on the dp
communicator's communication stream (``comm.start``: overlapping on sim) and is waited
for just before use; each layer's gradients are reduce-scattered on the stream while the
backward of the layers below runs, and waited for (then added into my shard) after the
next layer's backward. The first layer of each forward/backward is gathered with nothing
to hide it behind (the pipeline's recv/send between ops is not overlapped). The bytes are
the same; only their timing moves. Memory: my shard + the gathered params of one unit
(two neighbours with ``prefetch``: this one and the next), my gradient shard + one unit's
full grads (two with ``overlap``): the measured peaks equal ``zero_memory_by_kind(...,
prefetch=prefetch, overlap=overlap)`` of my stage's units.

Compute on sim: this stage charges each layer's FLOPs (``comm.compute`` at
``NetworkModel.flops``) just before that layer runs, so the communication has compute to
overlap (and a TPBlock's own tp collectives come after its compute, not racing the
prefetched all-gather for the rank's port); ``PipelineParallel`` then charges none for it (``charges_own_flops``; to charge
``PipelineParallel(times=...)`` seconds instead, build the stage with ``charge_compute=False``). On a network where
the dp collectives cost ``c`` and a layer's compute ``t`` per micro-batch op, the
synchronous step takes ``sum(t) + sum(c)``; with prefetch the all-gathers of all but the
first layer hide behind compute (a lower bound is ``max(sum(t), sum(c))``).
"""
from __future__ import annotations

import copy

from .fsdp_units import MemoryLedger, _Ready, _unbind, make_units, unit_optimizer
from .pipeline import PipelineStage
from .zero import ring_bytes_per_rank


class ShardedStage(PipelineStage):
    """My pipeline stage of ``model`` with ZeRO ``zero`` (2 or 3) over ``dp`` (module
    docstring). ``make_optimizer(shard)`` builds the optimizer of my chunk of each unit;
    ``sync(layer)`` (e.g. ``TPBlock.sync_grads``) runs on each layer's grads of a
    micro-batch before they are reduce-scattered.

    prefetch        stage 3: start the next layer's all-gather on ``dp``'s communication
                    stream before this layer computes (forward: i+1, backward: i-1)
    overlap         stages 2-3: reduce-scatter each layer's grads on the stream while the
                    backward of the layers below runs
    charge_compute  on sim, charge each layer's FLOPs before it runs (``PipelineParallel``
                    then charges none for this stage)
    """

    def __init__(self, model, stage, num_stages, dp, zero, make_optimizer, algorithm="ring", sync=None,
                 prefetch=False, overlap=False, charge_compute=True):
        if zero not in (2, 3):
            raise ValueError(f"ShardedStage: zero={zero!r}, use 2 or 3 (stages 0-1 need no sharded stage)")
        if prefetch and zero != 3:
            raise ValueError(f"ShardedStage: prefetch=True needs zero=3 (stage {zero} gathers no parameters "
                             f"during the step); use prefetch=False, or overlap=True for the reduce-scatters")
        super().__init__(model, stage, num_stages)
        self.dp, self.zero, self.algorithm, self.sync = dp, zero, algorithm, sync
        self.prefetch, self.overlap = bool(prefetch), bool(overlap)
        self.charges_own_flops = bool(charge_compute)
        self.model, self.xp, self.dtype = model, model.xp, model.dtype
        self.itemsize = model.dtype.itemsize
        self.units = [u for u in make_units(model, dp.world_size, dp.rank) if self.start <= u.layers[0] < self.stop]
        self._pos = {u.index: k for k, u in enumerate(self.units)}  # unit -> its place in my stage
        self.ledger = MemoryLedger()
        nb, xp = self.itemsize, self.xp
        self.gshards = []
        for u in self.units:
            self.gshards.append(xp.zeros(u.hi - u.lo, self.dtype))
            self.ledger.alloc("grads", (u.hi - u.lo) * nb)
        if zero == 2:
            self.ledger.alloc("params", sum(u.numel for u in self.units) * nb)
            views = [model.params[u.start + u.lo:u.start + u.hi] for u in self.units]
        else:
            self.shards = [model.params[u.start + u.lo:u.start + u.hi].copy() for u in self.units]
            for s in self.shards:
                self.ledger.alloc("params", s.size * nb)
            views = self.shards
        self.optimizers = []
        for v in views:
            self.optimizers.append(unit_optimizer(make_optimizer, v, self.ledger))
        # the full buffers of my stage go: grads always, params too for stage 3
        self.grads = xp.empty(0, self.dtype)
        for layer in self.layers:
            _unbind(layer)
        if zero == 3:
            self.params = xp.empty(0, self.dtype)
        else:
            for u in self.units:
                self._bind(self.layers[u.layers[0] - self.start], u, model.params[u.start:u.stop], None)

    # -- the pieces of one unit --------------------------------------------------------
    def _bind(self, layer, unit, pbuf, gbuf):
        i = unit.layers[0]

        def views(buf):
            return {s.key: buf[s.start - unit.start:s.stop - unit.start].reshape(s.shape)
                    for s in self.model.slots if s.layer == i}
        layer.bind(views(pbuf), views(gbuf) if gbuf is not None else {})

    def _gather(self, c, unit):
        """All-gather ``unit``'s params from every dp rank's chunk, on ``c`` (dp or its stream)."""
        return c.all_gather(self.shards[self._pos[unit.index]], algorithm=self.algorithm)

    def _start_gather(self, k, background):
        """Begin the params of my k-th unit (counted from here until ``_done``): stage 3
        all-gathers them (on the stream if ``background``), stage 2 has them."""
        unit = self.units[k]
        if self.zero == 2:
            return _Ready(self.model.params[unit.start:unit.stop])
        self.ledger.alloc("params", unit.numel * self.itemsize)
        if not unit.numel:
            return _Ready(self.xp.empty(0, self.dtype))
        if background:
            return self.dp.start(self._gather, unit)
        return _Ready(self._gather(self.dp, unit))

    def _done(self, layer, unit):
        if self.zero == 3:
            _unbind(layer)
            self.ledger.free("params", unit.numel * self.itemsize)

    def _charge(self, layer, n, backward):
        """Charge ``layer``'s FLOPs for ``n`` samples on sim (``comm.compute``)."""
        if not (self.charges_own_flops and self.dp.backend == "sim"):
            return
        f = layer.flops_per_sample(backward=False)
        if backward:
            f = layer.flops_per_sample(backward=True) - f
        if f:
            self.dp.compute(flops=n * f, label="backward" if backward else "forward")

    def flops(self, n, backward):
        """What ``PipelineParallel`` charges per op: nothing when I charge each layer."""
        return 0 if self.charges_own_flops else super().flops(n, backward)

    # -- one micro-batch ---------------------------------------------------------------
    def forward(self, x, microbatch):
        if microbatch in self.stash:
            raise RuntimeError(f"stage {self.stage}: forward of micro-batch {microbatch} twice before its backward")
        copies, nbytes, n = [], 0, len(x)
        s3, last = self.zero == 3, len(self.units) - 1
        pending = {0: self._start_gather(0, False)} if s3 and self.units else {}
        for k, (layer, unit) in enumerate(zip(self.layers, self.units)):
            c = copy.copy(layer)  # this micro-batch's own activations
            if s3:
                pbuf = pending.pop(k).wait()
                if k < last and self.prefetch:  # the next layer's params, in the background
                    pending[k + 1] = self._start_gather(k + 1, True)
                if unit.numel:
                    self._bind(c, unit, pbuf, None)
            nbytes += int(x.nbytes)
            self._charge(c, n, False)
            x = c.forward(x)
            if s3:
                self._done(c, unit)  # free the gathered params (reshard after forward)
                if k < last and not self.prefetch:
                    pending[k + 1] = self._start_gather(k + 1, False)
            copies.append(c)
        self._keep(microbatch, copies, nbytes)
        return x

    def backward(self, dout, microbatch):
        """Backward of ``microbatch``; each unit's grads are reduce-scattered (at once, or
        on the stream with ``overlap``) and added into my shard (no full gradient of the
        stage ever exists)."""
        if microbatch not in self.stash:
            raise RuntimeError(f"stage {self.stage}: backward of micro-batch {microbatch} before its forward")
        nb, s3 = self.itemsize, self.zero == 3
        copies = self.stash.pop(microbatch)
        n = None
        pending = {len(self.units) - 1: self._start_gather(len(self.units) - 1, False)} if self.units else {}
        in_flight = None  # (unit, grads buffer, request) of the reduce-scatter still running
        for k in reversed(range(len(self.units))):
            c, unit = copies[k], self.units[k]
            pbuf = pending.pop(k).wait()
            if k > 0 and self.prefetch:
                pending[k - 1] = self._start_gather(k - 1, True)
            gbuf = self.xp.zeros(unit.numel, self.dtype)
            self.ledger.alloc("grads", unit.numel * nb)
            if unit.numel:
                self._bind(c, unit, pbuf, gbuf)
            n = len(dout) if n is None else n
            self._charge(c, n, True)
            dout = c.backward(dout)
            if unit.numel and self.sync is not None:
                self.sync(c)
            if s3:
                self._done(c, unit)  # free the gathered params
            elif unit.numel:  # stage 2: the params stay bound, the grads buffer goes
                self._bind(c, unit, pbuf, None)
            if not self.overlap:  # reduce-scatter now, then free the buffer
                self._finish_reduce(unit, gbuf, _Ready(self._reduce_scatter(self.dp, gbuf)) if unit.numel else None)
            else:
                req = self.dp.start(self._reduce_scatter, gbuf) if unit.numel else None
                if in_flight is not None:  # the unit above: its reduce-scatter ran during my backward
                    self._finish_reduce(*in_flight)
                in_flight = (unit, gbuf, req)
            if k > 0 and not self.prefetch:
                pending[k - 1] = self._start_gather(k - 1, False)
        if in_flight is not None:
            self._finish_reduce(*in_flight)
        self.stash_bytes -= self._bytes.pop(microbatch)
        return dout

    def _reduce_scatter(self, c, gbuf):
        return c.reduce_scatter(gbuf, op="mean", algorithm=self.algorithm)

    def _finish_reduce(self, unit, gbuf, req):
        if req is not None:
            self.gshards[self._pos[unit.index]] += req.wait()  # accumulate into my shard
        self.ledger.free("grads", gbuf.nbytes)

    def backward_input(self, dout, microbatch):  # pragma: no cover - PipelineParallel runs F and B only
        raise NotImplementedError("ShardedStage: zero-bubble B/W split is not supported under ZeRO-2/3")

    # -- the step ----------------------------------------------------------------------
    def zero_grad(self):
        for g in self.gshards:
            g[...] = 0

    def step(self):
        """Adam on my shard of every unit; stage 2 all-gathers the updated params."""
        for u, opt, g in zip(self.units, self.optimizers, self.gshards):
            if opt is not None:
                opt.step(g)
            if self.zero == 2 and u.numel:
                mine = self.model.params[u.start + u.lo:u.start + u.hi].copy()
                self.dp.all_gather(mine, algorithm=self.algorithm, out=self.model.params[u.start:u.stop])

    def local_shards(self):
        """``[(start in the model's flat buffer, copy of my chunk)]``, one per unit."""
        src = self.shards if self.zero == 3 else [self.model.params[u.start + u.lo:u.start + u.hi]
                                                  for u in self.units]
        return [(u.start + u.lo, s.copy()) for u, s in zip(self.units, src)]


def dp_wire_bytes(unit_sizes, dp, zero, num_microbatches=1, itemsize=8):
    """Bytes each dp rank sends per step of ``train_3d(zero=...)`` over a ring (a list,
    by dp rank): stage 0 one all-reduce of the stage's N = sum(unit_sizes) elements,
    stage 1 a reduce-scatter + an all-gather of N (ZeroOptimizer), stage 2 per unit m
    reduce-scatters + one all-gather, stage 3 per unit m (two all-gathers + one
    reduce-scatter)."""
    m, n = int(num_microbatches), sum(unit_sizes)
    if zero in (0, 1):
        kinds = ("all_reduce",) if zero == 0 else ("reduce_scatter", "all_gather")
        plan = [(n, k, 1) for k in kinds]
    elif zero in (2, 3):
        per = (("reduce_scatter", m), ("all_gather", 1 if zero == 2 else 2 * m))
        plan = [(s, k, c) for s in unit_sizes if s for k, c in per]
    else:
        raise ValueError(f"dp_wire_bytes: zero={zero!r}, use 0, 1, 2 or 3")
    out = [0] * dp
    for size, kind, count in plan:
        if size:
            out = [a + count * b for a, b in zip(out, ring_bytes_per_rank(kind, size, dp, itemsize))]
    return out


__all__ = ["ShardedStage", "dp_wire_bytes"]
