"""Plots of one simulated run's ``Trace``: who sent what to whom, when.

    res = ms.launch(program, 4)
    timeline(res.trace)          # Gantt chart: a row per rank, a bar per message
    link_heatmap(res.trace)      # bytes on every src -> dst link
    bytes_per_rank(res.trace)    # bytes each rank sent (ring all-reduce: all equal)

Each function draws on ``ax`` (a new figure when None) and returns the axes. The
numbers drawn are the trace's own, so a test can read them back from the axes.
"""
from __future__ import annotations

import numpy as np

#: colours of compute spans by label; messages take the tab10 colours in label order
SPAN_COLORS = {"compute": "0.55", "forward": "0.7", "backward": "0.45", "update": "#7f6fb0", "reduce": "#e6a817"}


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def label_colors(labels):
    """{label: colour}: tab10 in the order labels first appear (stable for a trace)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def human_bytes(n):
    """1536 -> '1.5 KiB' (powers of two, as MPI and NCCL report sizes)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _time_unit(t_end):
    """(scale, unit) so that times read as small numbers on the axis."""
    for scale, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
        if t_end * scale >= 1:
            return scale, unit
    return 1e9, "ns"


UNITS = {"s": 1.0, "ms": 1e3, "µs": 1e6, "us": 1e6, "ns": 1e9}


def timeline(trace, ax=None, label=None, arrows=False, spans=True, title=None, unit=None):
    """Gantt chart of a trace: one row per rank, time across.

    Each message is a bar on its sender's row from the time it left to the time it
    arrived, coloured by its label ("all_reduce/ring", "barrier", ...); compute and
    reduction spans (``comm.compute``, gamma) are grey and amber bars under them.
    ``label``: only messages whose label starts with it. ``arrows``: also a line from
    (send start, src) to (arrival, dst) for each message (readable up to a few hundred).
    ``unit``: "s", "ms", "µs" or "ns" for the time axis (default: whichever reads best;
    fix it to compare timelines side by side). Returns the axes; ``ax.patches`` holds
    one rectangle per message, then one per span.
    """
    tr = trace.filter(label=label) if label is not None else trace
    ax = _axes(ax, (8, 0.45 * trace.world_size + 1.4))
    if unit is None:
        scale, unit = _time_unit(max(tr.end, 1e-12))
    elif unit in UNITS:
        scale = UNITS[unit]
    else:
        raise ValueError(f"unit={unit!r}: use one of {', '.join(UNITS)}")
    colors = label_colors(tr.labels())
    h = 0.36  # message bars in the upper part of the row, spans in the lower part
    for lab, col in colors.items():
        ms_ = [m for m in tr.messages if m.label == lab]
        ax.barh(
            [m.src + 0.2 for m in ms_],
            [(m.end - m.start) * scale for m in ms_],
            left=[m.start * scale for m in ms_],
            height=h, color=col, edgecolor="white", linewidth=0.4,
            label=lab or "(no label)",
        )
    dropped = [m for m in tr.messages if m.dropped]
    if dropped:
        ax.scatter([m.end * scale for m in dropped], [m.src + 0.2 for m in dropped],
                   marker="x", color="red", zorder=3, label="dropped")
    if spans and tr.spans:
        for lab in dict.fromkeys(s.label for s in tr.spans):
            ss = [s for s in tr.spans if s.label == lab]
            ax.barh(
                [s.rank - 0.2 for s in ss],
                [(s.end - s.start) * scale for s in ss],
                left=[s.start * scale for s in ss],
                height=h, color=SPAN_COLORS.get(lab, "0.75"), label=lab,
            )
    if arrows:
        for m in tr.messages:
            ax.annotate(
                "", xy=(m.end * scale, m.dst + 0.2), xytext=(m.start * scale, m.src + 0.2),
                arrowprops=dict(arrowstyle="-|>", color=colors[m.label], lw=0.6, alpha=0.7, mutation_scale=7),
            )
    ax.set_yticks(range(trace.world_size))
    ax.set_yticklabels([f"rank {r}" for r in range(trace.world_size)])
    ax.set_ylim(trace.world_size - 0.5, -0.5)  # rank 0 on top
    ax.set_xlim(0, max(tr.end * scale, 1e-9) * 1.01)
    ax.set_xlabel(f"virtual time ({unit})")
    ax.set_title(title if title is not None else
                 f"{len(tr.messages)} messages, {human_bytes(tr.bytes_sent())} on {trace.world_size} ranks")
    if colors or tr.spans:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    return ax


def link_matrix(trace, label=None):
    """(p, p) array: bytes sent from row rank to column rank."""
    tr = trace.filter(label=label) if label is not None else trace
    m = np.zeros((trace.world_size, trace.world_size), dtype=np.int64)
    for (s, d), n in tr.link_bytes().items():
        m[s, d] = n
    return m


def link_heatmap(trace, ax=None, label=None, annotate=None, title=None):
    """Heat map of bytes per link: row = sender, column = receiver.

    A ring lights the diagonal next to the main one; a parameter server or a naive
    all-reduce lights one row and one column (the bottleneck). ``annotate``: write the
    bytes in each cell (default: when world_size <= 10). Returns the axes; the matrix
    is ``ax.images[0].get_array()``.
    """
    m = link_matrix(trace, label)
    p = trace.world_size
    ax = _axes(ax, (0.5 * p + 2.6, 0.5 * p + 2.0))
    im = ax.imshow(m, cmap="viridis", vmin=0, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, label="bytes", fraction=0.046, pad=0.04)
    if annotate is None:
        annotate = p <= 10
    if annotate:
        top = m.max() or 1
        for (s, d), n in np.ndenumerate(m):
            if n:
                ax.text(d, s, human_bytes(n), ha="center", va="center", fontsize=7,
                        color="black" if n > 0.6 * top else "white")
    ax.set_xlabel("to rank (dst)")
    ax.set_ylabel("from rank (src)")
    ax.set_xticks(range(p))
    ax.set_yticks(range(p))
    ax.set_title(title if title is not None else f"bytes per link ({human_bytes(m.sum())} in all)")
    return ax


def bytes_per_rank(trace, ax=None, label=None, expected=None, title=None):
    """Bar chart of the bytes each rank sent.

    ``expected``: a number (or one per rank) drawn as a dashed line, e.g. the ring's
    ``2 (p-1)/p n`` (``mlscale.collectives.cost.bytes_sent``). Returns the axes; the
    bars are ``ax.patches`` in rank order.
    """
    sent = trace.per_rank_bytes(label=label)
    p = trace.world_size
    ax = _axes(ax, (max(3.5, 0.45 * p + 1.5), 3))
    ax.bar(range(p), sent, color="tab:blue", label="sent")
    if expected is not None:
        exp = np.broadcast_to(np.asarray(expected, dtype=float), (p,))
        ax.step(np.arange(p + 1) - 0.5, np.append(exp, exp[-1]), where="post",
                color="tab:red", linestyle="--", label="expected")
        ax.legend(fontsize="small", frameon=False, loc="upper right", ncol=2)
    ax.set_ylim(0, 1.25 * max(max(sent, default=0), 1 if expected is None else float(np.max(expected))) or 1)
    ax.set_xticks(range(p))
    ax.set_xlabel("rank")
    ax.set_ylabel("bytes sent")
    ax.set_title(title if title is not None else f"bytes sent per rank (max {human_bytes(max(sent, default=0))})")
    return ax
