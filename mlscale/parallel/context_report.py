"""Ring attention measured and drawn (for notebook 13 and the tests): who computes which
(query chunk, key chunk) pair under causal masking, contiguous vs zig-zag; the virtual time
of a forward and backward with and without overlap on sim; their timelines.

    owner = ring_work(4, zigzag=True)           # (2p, 2p): rank computing each pair, -1 skipped
    plot_ring_work(4)
    t = ring_times(4, (1, 2, 32, 8), NetworkModel(alpha=1e-5, beta=1e-9, flops=1e8))
    plot_ring_timeline(4, (1, 2, 32, 8), NetworkModel(...))
"""
from __future__ import annotations

import numpy as np

from .context import cp_chunks, cp_shard, ring_attention, ring_attention_backward, ring_blocks


def ring_work(world_size, causal=True, zigzag=True):
    """``(owner, step)``, each (2p, 2p) over the sequence cut into 2p equal chunks
    (queries down, keys across): the rank that computes each (query chunk, key chunk) pair
    and at which ring step; -1 where causal masking skips it (from ``ring_blocks``)."""
    p = world_size
    owner, step = np.full((2 * p, 2 * p), -1), np.full((2 * p, 2 * p), -1)
    for r in range(p):
        for t in range(p):
            src = (r - t) % p
            for qi, kj, diag in ring_blocks(p, r, t, causal, zigzag):
                qc, kc = cp_chunks(p, r, zigzag)[qi], cp_chunks(p, src, zigzag)[kj]
                qs = [qc] if zigzag else [2 * qc, 2 * qc + 1]  # a contiguous chunk is two of the 2p
                ks = [kc] if zigzag else [2 * kc, 2 * kc + 1]
                for a in qs:
                    for b in ks:
                        if not causal or b <= a:
                            owner[a, b], step[a, b] = r, t
    return owner, step


def work_per_rank(world_size, causal=True, zigzag=True):
    """(query chunk, key chunk) pairs of the 2p-chunk grid each rank computes (unmasked ones)."""
    owner, _ = ring_work(world_size, causal, zigzag)
    return [int((owner == r).sum()) for r in range(world_size)]


def plot_ring_work(world_size, causal=True, axes=None):
    """Two panels, contiguous and zig-zag: each (query chunk, key chunk) pair coloured by the
    rank that computes it, white where the causal mask skips it. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    p = world_size
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8.6, 4.0))
    cmap = ListedColormap(["white"] + [plt.cm.tab10(i % 10) for i in range(p)])
    for ax, zz in zip(axes, (False, True)):
        owner, step = ring_work(p, causal, zz)
        ax.imshow(owner + 1, cmap=cmap, vmin=0, vmax=p, origin="upper")
        for a, b in zip(*np.nonzero(owner >= 0)):
            ax.text(b, a, str(step[a, b]), ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(2 * p))
        ax.set_yticks(range(2 * p))
        ax.set_xlabel("key chunk (of 2p)")
        ax.set_ylabel("query chunk (of 2p)")
        work = work_per_rank(p, causal, zz)
        ax.set_title(f"{'zig-zag' if zz else 'contiguous'}: pairs per rank {work}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(r + 1)) for r in range(p)]
    axes[-1].legend(handles, [f"rank {r}" for r in range(p)], loc="upper left", bbox_to_anchor=(1.02, 1),
                    fontsize=8)
    return axes


def _one_pass(comm, qkvd, causal, zigzag, overlap):
    q, k, v, dout = (cp_shard(x, comm.world_size, comm.rank, zigzag) for x in qkvd)
    t0 = comm.clock
    out, cache = ring_attention(comm, q, k, v, causal=causal, zigzag=zigzag, overlap=overlap)
    t1 = comm.clock
    ring_attention_backward(comm, dout, cache)
    return t1 - t0, comm.clock - t1


def ring_run(world_size, shape, network, causal=True, zigzag=True, overlap=True, seed=0):
    """One forward and backward of ring attention on random float64 (b, h, s, dh) = ``shape``
    over ``world_size`` simulated ranks; returns ``({"forward", "backward"}: slowest rank's
    virtual seconds, trace)``."""
    from ..comm.launch import launch

    rng = np.random.default_rng(seed)
    qkvd = [rng.normal(size=shape) for _ in range(4)]
    res = launch(_one_pass, world_size, args=(qkvd, causal, zigzag, overlap), network=network)
    return {"forward": max(f for f, _ in res), "backward": max(b for _, b in res)}, res.trace


def ring_times(world_size, shape, network, causal=True, zigzag=True, seed=0):
    """``{"overlap": {...}, "no overlap": {...}}``: forward and backward virtual seconds."""
    return {name: ring_run(world_size, shape, network, causal, zigzag, ov, seed)[0]
            for name, ov in (("overlap", True), ("no overlap", False))}


def plot_ring_timeline(world_size, shape, network, causal=True, zigzag=True, axes=None):
    """Timelines of one forward + backward without and with overlap, on one time axis
    (``mlscale.viz.timeline``: K/V messages above, compute spans below). Returns the axes."""
    import matplotlib.pyplot as plt

    from ..viz.trace_plots import timeline

    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(9, 0.9 * world_size + 3), sharex=True)
    ends = []
    for ax, (name, ov) in zip(axes, (("no overlap", False), ("overlap", True))):
        t, trace = ring_run(world_size, shape, network, causal, zigzag, ov)
        timeline(trace, ax=ax, unit="µs",
                 title=f"ring attention, {name}: forward {t['forward'] * 1e6:.1f} µs + backward "
                       f"{t['backward'] * 1e6:.1f} µs (virtual)")
        ends.append(trace.end)
    for ax in axes:
        ax.set_xlim(0, max(ends) * 1e6 * 1.01)
    return axes


__all__ = ["ring_work", "work_per_rank", "plot_ring_work", "ring_run", "ring_times", "plot_ring_timeline"]
