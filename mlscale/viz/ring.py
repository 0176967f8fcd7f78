"""The ring all-reduce, step by step, read from a simulated run's trace.

    anim = animate_ring(5, n=20)              # or animate_ring(res.trace)
    IPython.display.HTML(anim.to_jshtml())    # in a notebook; no ffmpeg needed
    ring_steps_figure(4)                      # the same frames as small multiples

Ranks sit on a circle; each holds its vector cut in p chunks (one cell each). A cell's
number is how many ranks' pieces it sums so far. Reduce-scatter (p-1 steps): every
rank passes a partial sum to its right neighbour, which adds its own piece; after it,
rank r holds chunk (r+1) mod p summed over all p ranks. All-gather (p-1 more steps):
the finished chunks travel round the ring until every rank has all of them
(Patarasuk and Yuan 2009). 2(p-1) steps in all, so 2(p-1)+1 frames with the start.

The schedule is the one ``mlscale.collectives.allreduce.ring`` follows; the trace gives
which messages flew in each step, their sizes and their virtual times, and is checked
against the schedule (a trace of something else is refused, not drawn wrongly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .trace_plots import human_bytes

LABEL = "all_reduce/ring"


def ring_schedule(p):
    """The 2(p-1) steps of the ring all-reduce: for each step, ``(phase, [(src, dst,
    chunk)])``. In reduce-scatter step s rank r sends chunk (r - s) mod p; in all-gather
    step s it sends chunk (r + 1 - s) mod p, the one it completed or received last."""
    steps = []
    for s in range(p - 1):
        steps.append(("reduce-scatter", [(r, (r + 1) % p, (r - s) % p) for r in range(p)]))
    for s in range(p - 1):
        steps.append(("all-gather", [(r, (r + 1) % p, (r + 1 - s) % p) for r in range(p)]))
    return steps


@dataclass
class RingSteps:
    """What each frame shows. ``states[k]`` is a (p, p) int array of bit masks: bit q of
    ``states[k][r, c]`` is set when rank r's copy of chunk c includes rank q's piece.
    ``steps[k-1]`` is the step that led to frame k: ``(phase, sends, t_end)`` with
    sends ``(src, dst, chunk, nbytes)``. ``sent[k]``: bytes each rank had sent by then."""

    p: int
    chunk_bytes: list
    steps: list = field(default_factory=list)
    states: list = field(default_factory=list)
    sent: list = field(default_factory=list)

    @property
    def nbytes(self):
        return sum(self.chunk_bytes)

    def counts(self, k):
        """(p, p) array: how many ranks' pieces each cell sums at frame k."""
        s = self.states[k]
        return np.vectorize(lambda v: bin(int(v)).count("1"), otypes=[int])(s) if s.size else s


def _trace_of(trace_or_p, n, network):
    if isinstance(trace_or_p, (int, np.integer)):
        from ..comm import launch

        p = int(trace_or_p)
        n = 4 * p + 1 if n is None else n  # float32 elements; not a multiple of p
        res = launch(lambda comm: comm.all_reduce(np.ones(n, np.float32), algorithm="ring"), p, network=network)
        return res.trace
    return trace_or_p


def ring_steps(trace_or_p, n=None, network=None, label=LABEL):
    """Replay a ring all-reduce from a trace (or from a fresh ``sim`` run of ``n`` float32
    elements on p ranks when given an int). Messages whose label starts with ``label``
    (the library's ring by default; ``""`` takes every message, e.g. a learner's own
    ring) are taken in the order each rank sent them; the first 2(p-1) per rank make
    the steps, and must follow the ring's schedule."""
    trace = _trace_of(trace_or_p, n, network)
    p = trace.world_size
    by_src = [[] for _ in range(p)]
    for m in trace.messages:
        if m.label.startswith(label):
            by_src[m.src].append(m)
    nsteps = 2 * (p - 1)
    if any(len(ms_) < nsteps for ms_ in by_src):
        raise ValueError(
            f"this trace has {[len(b) for b in by_src]} ring messages per rank (label {label!r}); a ring "
            f"all-reduce on {p} ranks sends 2(p-1) = {nsteps} from each. Trace a run of "
            "comm.all_reduce(x, algorithm='ring'), or pass label='' for a ring of your own."
        )
    chunk_bytes = [by_src[r][0].nbytes for r in range(p)] if p > 1 else [0]
    rs = RingSteps(p, chunk_bytes)
    state = np.array([[1 << r] * p for r in range(p)], dtype=object)
    sent = np.zeros(p, dtype=np.int64)
    rs.states.append(state.copy())
    rs.sent.append(sent.copy())
    for k, (phase, plan) in enumerate(ring_schedule(p)):
        before = state.copy()
        sends = []
        for src, dst, chunk in plan:
            m = by_src[src][k]
            if m.dst != dst or m.nbytes != chunk_bytes[chunk]:
                raise ValueError(
                    f"step {k} of the ring: rank {src} sent {m.nbytes} bytes to rank {m.dst}; the ring "
                    f"schedule says chunk {chunk} ({chunk_bytes[chunk]} bytes) to rank {dst}"
                )
            state[dst, chunk] = (before[dst, chunk] | before[src, chunk]) if phase == "reduce-scatter" \
                else before[src, chunk]
            sent[src] += m.nbytes
            sends.append((src, dst, chunk, m.nbytes))
        t_end = max(by_src[src][k].end for src in range(p))
        rs.steps.append((phase, sends, t_end))
        rs.states.append(state.copy())
        rs.sent.append(sent.copy())
    return rs


def _positions(p, radius=1.0):
    """Rank r at angle 90 - 360 r / p degrees: rank 0 on top, the ring runs clockwise."""
    ang = [math.pi / 2 - 2 * math.pi * r / p for r in range(p)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in ang]


def draw_ring_frame(ax, rs, k, cmap="YlGnBu", compact=False):
    """Draw frame k of ``rs`` (a ``RingSteps``) on ``ax``, clearing it first. An arrow
    goes from the chunk each rank sent to the cell it landed in (outlined red)."""
    import matplotlib
    from matplotlib.patches import Circle, Rectangle

    ax.clear()
    ax.set_aspect("equal")
    ax.set_axis_off()
    p = rs.p
    cm = matplotlib.colormaps[cmap]
    counts = rs.counts(k)
    w = min(0.2, 1.6 * math.sin(math.pi / max(p, 2)) / p)  # a rank's row: 0.8 of the gap to its neighbour
    show_numbers = p <= 8
    sends = rs.steps[k - 1][1] if k > 0 else []
    moved = {(dst, chunk) for _, dst, chunk, _ in sends}
    pos = _positions(p, 1.0)
    cell = {}  # (rank, chunk) -> centre
    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.85", lw=1, zorder=0))
    for r, (x, y) in enumerate(pos):
        x0, y0 = x - p * w / 2, y - w / 2
        for c in range(p):
            frac = counts[r, c] / p
            face = "#2ca02c" if counts[r, c] == p else cm(0.12 + 0.7 * frac)
            hot = (r, c) in moved
            ax.add_patch(Rectangle((x0 + c * w, y0), w, w, facecolor=face, edgecolor="red" if hot else "0.3",
                                   lw=1.8 if hot else 0.5, zorder=2 + hot))
            cell[r, c] = (x0 + (c + 0.5) * w, y)
            if show_numbers:
                ax.text(x0 + (c + 0.5) * w, y, str(counts[r, c]), ha="center", va="center",
                        fontsize=6 if compact else 7, color="white" if frac > 0.6 else "black", zorder=4)
        above = y > -0.5  # labels away from the circle's centre, above or below the row
        ax.text(x, y + (w / 2 + 0.12) * (1 if above else -1), f"rank {r}", ha="center", va="center",
                fontsize=6.5 if compact else 8, weight="bold")
    for src, dst, chunk, nb in sends:
        ax.annotate("", xy=cell[dst, chunk], xytext=cell[src, chunk], zorder=5,
                    arrowprops=dict(arrowstyle="-|>", color="tab:red", lw=1.2, alpha=0.85,
                                    connectionstyle="arc3,rad=-0.2", shrinkA=3, shrinkB=3))
    sent = rs.sent[k].max() / rs.nbytes if rs.nbytes else 0.0
    if k == 0:
        head, t_txt = "start", "t = 0"
    else:
        phase, _, t_end = rs.steps[k - 1]
        head, t_txt = f"step {k}/{len(rs.steps)}: {phase}", f"t = {t_end * 1e6:.1f} µs"
    if compact:
        ax.set_title(f"{head}\n{sent:.2f} n sent per rank", fontsize=7)
    else:
        first = f"{p} ranks; each vector cut in {p} chunks c0..c{p - 1}" if k == 0 else head
        ax.set_title(f"{first}\n{t_txt}; sent per rank so far: {sent:.2f} n (n = {human_bytes(rs.nbytes)})",
                     fontsize=8)
    lim = 1.0 + max(p * w / 2, 0.3) + 0.1
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)


def animate_ring(trace_or_p, n=None, network=None, interval=900, dpi=72, figsize=(4.8, 5.0), label=LABEL):
    """The ring all-reduce as a ``matplotlib.animation.FuncAnimation``, one frame per step
    plus the start: 2(p-1)+1 frames. ``trace_or_p``: a trace of a ring all-reduce, or p to
    simulate one of ``n`` float32 elements. In a notebook show it with
    ``IPython.display.HTML(anim.to_jshtml())``; small ``dpi`` keeps the page light.
    ``anim.ring`` holds the ``RingSteps`` drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    rs = ring_steps(trace_or_p, n, network, label)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88)
    nframes = len(rs.states)

    def update(k):
        draw_ring_frame(ax, rs, k)
        return []

    anim = FuncAnimation(fig, update, frames=range(nframes), interval=interval, blit=False, repeat=True)
    anim.ring = rs
    anim.n_frames = nframes
    plt.close(fig)  # the animation draws it; no stray static copy in a notebook
    return anim


def ring_steps_figure(p_or_trace, n=None, network=None, ncols=None, panel=2.3, label=LABEL):
    """The frames of :func:`animate_ring` side by side (small multiples): the start, the
    p-1 reduce-scatter steps, the p-1 all-gather steps. Returns the figure; its first
    2(p-1)+1 axes are the frames in order."""
    import matplotlib.pyplot as plt

    rs = ring_steps(p_or_trace, n, network, label)
    nframes = len(rs.states)
    ncols = ncols or min(nframes, rs.p if rs.p > 2 else nframes)
    nrows = math.ceil(nframes / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * 1.2 * nrows), squeeze=False)
    flat = axes.ravel()
    for k in range(nframes):
        draw_ring_frame(flat[k], rs, k, compact=True)
    for ax in flat[nframes:]:
        ax.set_axis_off()
    fig.suptitle(f"ring all-reduce on {rs.p} ranks, {len(rs.steps)} steps; a cell = a chunk (c0 left), "
                 "its number = ranks summed in it, green = complete", fontsize=8)
    fig.tight_layout()
    return fig
