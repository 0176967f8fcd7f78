"""ZeRO stages 0-3 of any ``mlscale.nn`` Sequential model (the MLP, the GPT), unit by unit:
ZeRO-2 (gradients sharded) and ZeRO-3 / FSDP (parameters sharded too).

Rajbhandari et al. 2020 (ZeRO, SC'20), sections 5.1-5.3 and 7; PyTorch FSDP (Zhao et
al. 2023, VLDB, sections 3.2-3.3: units, all-gather before use, free after, prefetch).

    fsdp = FSDP(comm, nn.GPT(cfg, seed=0, dtype=np.float64), lambda s: nn.Adam(s, lr=1e-3), stage=3)
    loss = fsdp.loss_and_grad(x, y)      # my data-parallel share of the batch
    fsdp.step()                          # Adam on my shards only

The model is cut into **units** (default one per layer; ``units=k`` groups k layers):
unit u holds the contiguous slice [start_u, stop_u) of the flat parameters, and rank r
owns chunk r of it (``np.array_split`` cuts: any size, any p). Per step, on ``comm``
(the data-parallel group, e.g. ``mesh["dp"]``):

=====  ====================================================================  ================
stage  what a rank keeps / what it does                                      wire (all ranks)
=====  ====================================================================  ================
0      all params, grads, Adam state; all-reduce (mean) each unit's grads    2(p-1) N
1      all params and grads; reduce-scatter each unit's grads into my        2(p-1) N
       chunk, Adam on my chunk, all-gather the params
2      all params; each unit's grads live only during its backward: the      2(p-1) N
       unit is reduce-scattered (on the communication stream, overlapping
       the backward of the units below) and ADDED into my gradient shard
3      my parameter shard only: before a unit's forward (and again before    3(p-1) N
       its backward) its params are all-gathered, and freed after use;
       ``prefetch``: the next unit's all-gather starts on the communication
       stream before this unit computes; grads as stage 2
=====  ====================================================================  ================

So ZeRO-2 moves the bytes of data parallelism and ZeRO-3 1.5 times them (two all-gathers
and one reduce-scatter per unit per step; paper section 7.2.2). N counts elements times
the item size. ``wire_bytes`` (zero.py) gives the exact per-rank numbers of the ring.

Memory: every parameter, gradient and optimizer buffer this class holds is counted in
``self.ledger`` (allocate / free, live and peak bytes per kind). The peaks equal the
ZeRO model (``zero_memory`` with this dtype's bytes) per rank, plus for stages 2-3 the
unit buffers in flight: stage 3 holds my shard + the gathered params of one unit (two
with prefetch: this one and the next), stages 2-3 my gradient shard + one unit's full
gradients (two with overlap: this one and the one still being reduce-scattered); see
``zero_memory_by_kind`` in zero.py. Not counted: activations, and the collectives' own
scratch buffers (at most one unit).

Mixed precision (``mixed_precision=MixedPrecisionPolicy(param_dtype, reduce_dtype)``,
stages 2-3, fsdp_precision.py): master shards and Adam state in the model's dtype,
compute and all-gathers in ``param_dtype``, gradients reduce-scattered in
``reduce_dtype``; float16 with dynamic loss scaling (``skipped_steps``).
"""
from __future__ import annotations

import numpy as np

from .fsdp_precision import MixedPrecisionPolicy, found_inf, resolve_policy
from .fsdp_units import KINDS, MemoryLedger, Unit, _Ready, _state_nbytes, _unbind, assemble, make_units, unit_optimizer  # noqa: F401


class FSDP:
    """ZeRO ``stage`` 0-3 of ``model`` over the data-parallel ``comm`` (module docstring).

    make_optimizer   ``lambda shard: nn.Adam(shard, lr=...)``, called once per unit on
                     the flat slice this rank updates (the whole unit for stage 0)
    units            None (one per layer), k layers per unit, or a list of layer lists
    prefetch         stage 3: start the next unit's all-gather before this one computes
    overlap          stages 2-3: reduce-scatter each unit's grads on the communication
                     stream while the backward of the units below runs
    charge_compute   on sim, charge each unit's forward/backward FLOPs (``comm.compute``)
    mixed_precision  None, or a ``MixedPrecisionPolicy`` (stages 2-3): FSDP then computes
                     on a ``param_dtype`` copy of ``model`` and keeps the model's dtype
                     for the master shards (module docstring, fsdp_precision.py)

    FSDP takes the model over: stages 2-3 release its flat ``grads`` (and stage 3 its
    ``params``) and bind each layer to the unit buffers only while they exist, so call
    ``fsdp.loss_and_grad`` / ``fsdp.step``, not the model's; read the parameters with
    ``local_shards()`` (+ ``assemble``) or ``full_params()``.
    """

    def __init__(self, comm, model, make_optimizer, stage=3, units=None, prefetch=True, overlap=True,
                 algorithm="ring", charge_compute=True, mixed_precision=None):
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"FSDP stage={stage!r}: use 0 (data parallel), 1, 2 or 3")
        if not (hasattr(model, "layers") and hasattr(model, "slots")):
            raise TypeError(f"FSDP needs an mlscale.nn Sequential model (MLP, GPT), got {type(model).__name__}")
        if any(getattr(layer, "tied_to", None) is not None for layer in model.layers):
            raise ValueError("FSDP: a tied weight (GPTConfig(tie_embeddings=True)) is used by two units; "
                             "use untied embeddings (tie_embeddings=False)")
        mp = resolve_policy(mixed_precision, model.dtype, stage)
        master, self.master_dtype = model, model.dtype
        self.reduce_dtype, self.scaler = model.dtype, None
        if mp is not None:  # compute on a param_dtype copy; the model's values become the master shards
            model = model.astype(mp[0])
            self.reduce_dtype, self.scaler = mp[1], mp[2]
        self.mixed_precision, self.skipped_steps, self.steps = mp is not None, 0, 0
        self.comm, self.model, self.stage, self.algorithm = comm, model, stage, algorithm
        self.prefetch, self.overlap, self.charge = bool(prefetch), bool(overlap), bool(charge_compute)
        self.xp, self.dtype, self.itemsize = model.xp, model.dtype, model.dtype.itemsize
        self.units = make_units(model, comm.world_size, comm.rank, units)
        self.ledger = MemoryLedger(KINDS + ("master",) if mp is not None else KINDS)
        self.num_params = model.num_params
        nb = self.itemsize
        if stage <= 2:  # every rank keeps all the parameters, in the model's flat buffer
            self.ledger.alloc("params", model.num_params * nb)
        if stage <= 1:  # ... and all the gradients
            self.ledger.alloc("grads", model.num_params * nb)
        else:
            self.gshards = [self._alloc("grads", u.hi - u.lo, zero=True, dtype=master.dtype) for u in self.units]
        kind = "master" if mp is not None else "params"
        if stage == 3 or mp is not None:  # my chunk of each unit (stage 3: then the full buffers go)
            self.shards = [self._own(master.params[u.start + u.lo:u.start + u.hi], kind) for u in self.units]
        if stage == 3:
            model._params = self.xp.empty(0, self.dtype)
        if stage >= 2:
            model._grads = self.xp.empty(0, self.dtype)
            for layer in model.layers:
                _unbind(layer)
            if stage == 2:
                self._bind_params_only()
        self.optimizers = []
        for u in self.units:
            if stage == 0:
                view = model.params[u.start:u.stop]
            elif stage == 1 or (stage == 2 and mp is None):
                view = model.params[u.start + u.lo:u.start + u.hi]
            else:
                view = self.shards[u.index]
            self.optimizers.append(unit_optimizer(make_optimizer, view, self.ledger))

    # -- buffers ----------------------------------------------------------------------
    def _alloc(self, kind, n, zero=False, dtype=None):
        buf = (self.xp.zeros if zero else self.xp.empty)(n, self.dtype if dtype is None else dtype)
        self.ledger.alloc(kind, buf.nbytes)
        return buf

    def _own(self, view, kind="params"):
        buf = self._alloc(kind, view.size, dtype=view.dtype)
        buf[...] = view
        return buf

    def _free(self, kind, buf):
        self.ledger.free(kind, buf.nbytes)

    def _low(self, shard):
        """My chunk as the units are gathered: in ``param_dtype`` under mixed precision."""
        return shard.astype(self.dtype, copy=False)

    def _views(self, unit, buf, i):
        """``{key: view}`` of layer i's parameters in ``buf``, the flat slice of ``unit``."""
        return {s.key: buf[s.start - unit.start:s.stop - unit.start].reshape(s.shape)
                for s in self.model.slots if s.layer == i}

    def _bind(self, unit, pbuf, gbuf):
        for i in unit.layers:
            self.model.layers[i].bind(self._views(unit, pbuf, i), self._views(unit, gbuf, i) if gbuf is not None
                                      else {})

    def _bind_params_only(self):
        for u in self.units:
            self._bind(u, self.model.params[u.start:u.stop], None)

    # -- communication (each runs on ``c``: the comm, or its communication stream) --------
    def _gather(self, c, unit):
        """All-gather ``unit``'s params from every rank's chunk (stage 3)."""
        return c.all_gather(self._low(self.shards[unit.index]), algorithm=self.algorithm)

    def _start_gather(self, unit, background):
        self.ledger.alloc("params", unit.numel * self.itemsize)  # the gathered buffer exists from here
        if unit.numel == 0:
            return None
        if background:
            return self.comm.start(self._gather, unit)
        return _Ready(self._gather(self.comm, unit))

    def _reduce_scatter(self, c, unit, gbuf):
        with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow: caught in step()
            return c.reduce_scatter(gbuf.astype(self.reduce_dtype, copy=False), op="mean", algorithm=self.algorithm)

    # -- compute ----------------------------------------------------------------------
    def _charge_flops(self, unit, batch, backward):
        if self.charge and self.comm.backend == "sim":
            layers = [self.model.layers[i] for i in unit.layers]
            f = sum(lay.flops_per_sample(False) for lay in layers)
            if backward:
                f = sum(lay.flops_per_sample(True) for lay in layers) - f
            if f:
                self.comm.compute(flops=batch * f, label="backward" if backward else "forward")

    def loss_and_grad(self, x, y, zero_grad=True):
        """Forward and backward of my share ``(x, y)`` of the batch; returns my mean loss.
        ``zero_grad=False`` adds to the gradients of earlier micro-batches (stages 2-3:
        each micro-batch is reduce-scattered and added into the gradient shards)."""
        from ..nn._xp import to_xp
        from ..nn.layers import softmax_cross_entropy

        model, units, s3 = self.model, self.units, self.stage == 3
        if zero_grad:
            self.zero_grad()
        h = model._check_input(x)
        batch = len(h)
        pending = {}  # stage 3: unit index -> request of its all-gather
        if s3:
            pending[0] = self._start_gather(units[0], False)
        for u in units:  # forward, unit by unit
            if s3:
                pbuf = self._wait_gather(u, pending)
                if self.prefetch and u.index + 1 < len(units):  # the next unit's params, in the background
                    pending[u.index + 1] = self._start_gather(units[u.index + 1], True)
                self._bind(u, pbuf, None)
            for i in u.layers:
                h = model.layers[i].forward(h)
            self._charge_flops(u, batch, False)
            if s3:
                self._release(u)  # free the gathered params (FSDP reshard_after_forward)
                if not self.prefetch and u.index + 1 < len(units):
                    pending[u.index + 1] = self._start_gather(units[u.index + 1], False)
        if s3:  # the backward starts with the last unit: gather it again
            pending[units[-1].index] = self._start_gather(units[-1], self.prefetch)
        loss, dout = softmax_cross_entropy(h, to_xp(y, self.xp))
        if self.scaler is not None:  # float16: scale the loss (inf past 65504: that step is skipped)
            with np.errstate(over="ignore"):
                dout = (dout.astype(np.float32) * np.float32(self.scaler.scale)).astype(self.dtype)
        in_flight = None  # (unit, grads buffer, request) of the reduce-scatter still running
        for u in reversed(units):  # backward, unit by unit
            if s3:
                pbuf = self._wait_gather(u, pending)
                if self.prefetch and u.index > 0:
                    pending[u.index - 1] = self._start_gather(units[u.index - 1], True)
            else:
                pbuf = model.params[u.start:u.stop]
            if self.stage >= 2:  # this unit's full gradients exist only now
                gbuf = self._alloc("grads", u.numel, zero=True)
                self._bind(u, pbuf, gbuf)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught in step()
                for i in reversed(u.layers):
                    dout = model.layers[i].backward(dout)
            self._charge_flops(u, batch, True)
            if self.stage <= 1:
                continue  # stages 0-1 average the full gradients in step()
            if s3:
                self._release(u)
                if not self.prefetch and u.index > 0:
                    pending[u.index - 1] = self._start_gather(units[u.index - 1], False)
            else:
                self._bind(u, pbuf, None)
            if not self.overlap:  # reduce-scatter now, then free the buffer
                self._finish_reduce(u, gbuf, _Ready(self._reduce_scatter(self.comm, u, gbuf)) if u.numel else None)
                continue
            req = self.comm.start(self._reduce_scatter, u, gbuf) if u.numel else None
            if in_flight is not None:  # the unit above: its reduce-scatter ran during my backward
                self._finish_reduce(*in_flight)
            in_flight = (u, gbuf, req)
        if in_flight is not None:
            self._finish_reduce(*in_flight)
        return loss

    def _wait_gather(self, unit, pending):
        req = pending.pop(unit.index)
        return self.xp.empty(0, self.dtype) if req is None else req.wait()

    def _release(self, unit):
        for i in unit.layers:
            _unbind(self.model.layers[i])
        self.ledger.free("params", unit.numel * self.itemsize)

    def _finish_reduce(self, unit, gbuf, req):
        if req is not None:
            self.gshards[unit.index] += req.wait()  # accumulate into my shard
        self._free("grads", gbuf)

    def zero_grad(self):
        if self.stage <= 1:
            self.model.zero_grad()
        else:
            for g in self.gshards:
                g[...] = 0

    def step(self):
        """Average the gradients over ``comm`` (stages 0-1; stages 2-3 did it in backward),
        update my slice with the optimizers, and all-gather the params (stages 1-2)."""
        comm, model, algo = self.comm, self.model, self.algorithm
        if self.scaler is not None:  # unscale my shards; skip the step everywhere if any rank overflowed
            for g in self.gshards:
                g *= 1.0 / self.scaler.scale
            self.steps += 1
            if self.scaler.update(found_inf(comm, self.gshards, algo)):
                self.skipped_steps += 1
                return
        for u, opt in zip(self.units, self.optimizers):
            if self.stage == 0:
                if u.numel:
                    g = model.grads[u.start:u.stop]
                    comm.all_reduce(g, op="mean", algorithm=algo, out=g)
                    opt.step(g)
                continue
            if self.stage == 1:
                g = comm.reduce_scatter(model.grads[u.start:u.stop], op="mean", algorithm=algo) if u.numel else None
            else:
                g = self.gshards[u.index]
            if opt is not None:
                opt.step(g)
            if self.stage in (1, 2) and u.numel:
                mine = (self._low(self.shards[u.index]) if self.mixed_precision
                        else model.params[u.start + u.lo:u.start + u.hi].copy())
                comm.all_gather(mine, algorithm=algo, out=model.params[u.start:u.stop])

    # -- reading the result -----------------------------------------------------------
    def local_shards(self):
        """``[(global start, copy of my chunk)]`` of the parameters, one per unit."""
        out = []
        for u in self.units:
            chunk = self.shards[u.index] if self.stage == 3 or self.mixed_precision \
                else self.model.params[u.start + u.lo:u.start + u.hi]
            out.append((u.start + u.lo, chunk.copy()))
        return out

    def full_params(self):
        """Every parameter, flat, on every rank (stage 3: an all-gather per unit, which
        shows in the trace; stages 0-2: a copy of the model's buffer)."""
        if self.stage <= 2 and not self.mixed_precision:
            return self.model.params.copy()
        parts = [self.comm.all_gather(self.shards[u.index], algorithm=self.algorithm) for u in self.units if u.numel]
        return self.xp.concatenate(parts) if parts else self.xp.empty(0, self.master_dtype)

    def optimizer_state_nbytes(self):
        return sum(_state_nbytes(o) for o in self.optimizers)


__all__ = ["FSDP", "MixedPrecisionPolicy", "MemoryLedger", "Unit", "make_units", "assemble", "KINDS"]
