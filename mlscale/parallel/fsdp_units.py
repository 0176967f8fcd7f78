"""The pieces of ``FSDP`` (fsdp.py) that are not the schedule: units (which layers, which
flat slice, my chunk), the memory ledger (allocate / free counters, live and peak bytes),
and ``assemble`` to rebuild the full parameters from every rank's shards."""
from __future__ import annotations

from typing import NamedTuple

from .tp_comm import shard_range

KINDS = ("params", "grads", "optimizer")


class MemoryLedger:
    """Live and peak bytes per kind ("params", "grads", "optimizer"; "master" too under
    mixed precision), from alloc/free calls."""

    def __init__(self, kinds=KINDS):
        self.live = dict.fromkeys(kinds, 0)
        self.peak = dict.fromkeys(kinds, 0)
        self.peak_total = 0

    def alloc(self, kind, nbytes):
        self.live[kind] += int(nbytes)
        self.peak[kind] = max(self.peak[kind], self.live[kind])
        self.peak_total = max(self.peak_total, sum(self.live.values()))

    def free(self, kind, nbytes):
        self.live[kind] -= int(nbytes)
        if self.live[kind] < 0:
            raise RuntimeError(f"MemoryLedger: freed more {kind} bytes than allocated")

    def __repr__(self):
        return f"MemoryLedger(live={self.live}, peak={self.peak}, peak_total={self.peak_total})"


class Unit(NamedTuple):
    """One FSDP unit: layers [first, last] holding flat params [start, stop); my chunk is
    [start + lo, start + hi) (``shard_range(stop - start, p, rank)``)."""
    index: int
    layers: tuple
    start: int
    stop: int
    lo: int
    hi: int

    @property
    def numel(self):
        return self.stop - self.start


def make_units(model, world_size, rank, units=None):
    """The units of ``model``: ``units=None`` one per layer, an int k: k layers each, or
    a list of layer-index lists covering every layer once, in order."""
    n = len(model.layers)
    if units is None:
        units = 1
    if isinstance(units, int) and not isinstance(units, bool):
        if units < 1:
            raise ValueError(f"FSDP units={units}: give the number of layers per unit (>= 1) or a list of lists")
        groups = [list(range(i, min(i + units, n))) for i in range(0, n, units)]
    else:
        groups = [list(g) for g in units]
        if [i for g in groups for i in g] != list(range(n)):
            raise ValueError(f"FSDP units={units}: the lists must cover the layers 0..{n - 1} once, in order "
                             f"(e.g. [[0, 1], [2, 3], [4]])")
    out = []
    for g in groups:
        slots = [s for s in model.slots if s.layer in g]
        start = slots[0].start if slots else (out[-1].stop if out else 0)
        stop = slots[-1].stop if slots else start
        lo, hi = shard_range(stop - start, world_size, rank)
        out.append(Unit(len(out), tuple(g), start, stop, lo, hi))
    return out


def _unbind(layer):
    """Drop a layer's (and its children's) parameter and gradient views."""
    layer.params = layer.grads = None
    for c in getattr(layer, "children", lambda: {})().values():
        _unbind(c)


def assemble(shards_per_rank, num_params, xp=None):
    """The full flat parameters from every rank's ``local_shards()`` (no communication)."""
    import numpy as np

    xp = np if xp is None else xp
    full, seen = None, 0
    for shards in shards_per_rank:
        for start, chunk in shards:
            if full is None:
                full = xp.full(num_params, xp.nan, dtype=chunk.dtype)
            full[start:start + chunk.size] = chunk
            seen += chunk.size
    if seen != num_params:
        raise ValueError(f"assemble: the shards cover {seen} of {num_params} parameters: pass every rank's "
                         f"local_shards()")
    return full


class _Ready:
    def __init__(self, value):
        self.value = value

    def wait(self):
        return self.value


def _state_nbytes(opt):
    if opt is None:
        return 0
    return sum(int(v.nbytes) for v in opt._state().values() if hasattr(v, "nbytes"))


def unit_optimizer(make_optimizer, view, ledger):
    """``make_optimizer(view)`` for one unit's (shard of) parameters, None for an empty one;
    its state is counted in ``ledger``. The optimizer must be built on ``view`` itself."""
    opt = make_optimizer(view) if view.size else None
    if opt is not None and getattr(opt, "params", None) is not view:
        raise TypeError("make_optimizer must build the optimizer on the array it is given, "
                        "e.g. lambda shard: nn.Adam(shard, lr=1e-3)")
    ledger.alloc("optimizer", _state_nbytes(opt))
    return opt


__all__ = ["KINDS", "MemoryLedger", "Unit", "make_units", "assemble"]
