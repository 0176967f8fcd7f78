"""Drawing topologies and consensus curves with matplotlib alone (no networkx).

Ranks sit on a circle (a grid for a torus); an undirected edge is a line, a directed
one an arrow. ``plot_consensus`` draws the measured disagreement per round against
the predicted rho^t on a log scale.
"""
from __future__ import annotations

import math

import numpy as np


def layout(topology):
    """(p, 2) positions: a grid for a torus, the centre in the middle for a star, a circle
    (rank 0 at the top, clockwise) otherwise."""
    p = topology.world_size
    shape = getattr(topology, "shape", None)
    if shape is not None:
        rows, cols = shape
        return np.array([[i % cols, -(i // cols)] for i in range(p)], dtype=float)
    if topology.name.startswith("star") and p > 2:
        center = int(np.argmax(topology.degrees()))
        others = [r for r in range(p) if r != center]
        ang = math.pi / 2 - 2 * math.pi * np.arange(p - 1) / (p - 1)
        pos = np.zeros((p, 2))
        pos[others] = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        return pos
    ang = math.pi / 2 - 2 * math.pi * np.arange(p) / max(p, 1)
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def draw_topology(topology, ax=None, t=0, title=None, node_size=0.09, labels=True, color="C0"):
    """Draw round ``t`` of ``topology`` on ``ax`` (a new figure if None); returns ax."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    pos = layout(topology)
    p = topology.world_size
    shape = getattr(topology, "shape", None)
    r = node_size if shape is None else 0.18
    A = topology.adjacency(t)
    for i, j in zip(*np.nonzero(A)):           # edge j -> i
        a, b = pos[j], pos[i]
        wrap = shape is not None and np.abs(a - b).max() > 1.01
        if topology.directed:
            d = (b - a) / (np.linalg.norm(b - a) + 1e-12)
            ax.annotate("", xy=b - d * r, xytext=a + d * r,
                        arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.8, shrinkA=0, shrinkB=0,
                                        connectionstyle="arc3,rad=0.12"))
        elif j < i or not A[j, i]:
            if wrap:                            # torus wrap-around: a dashed stub out of each side
                d = np.sign(b - a) * (np.abs(b - a) > 1.01)
                for q, s in ((a, -d), (b, d)):
                    ax.plot([q[0], q[0] + 0.45 * s[0]], [q[1], q[1] + 0.45 * s[1]], ls="--", c="0.6", lw=0.8)
            else:
                ax.plot([a[0], b[0]], [a[1], b[1]], c="0.45", lw=0.8, zorder=1)
    for k in range(p):
        ax.add_patch(Circle(pos[k], r, color=color, zorder=2))
        if labels and p <= 32:
            ax.text(pos[k][0], pos[k][1], str(k), ha="center", va="center", color="white",
                    fontsize=7 if p > 12 else 8, zorder=3)
    ax.set_aspect("equal")
    pad = 0.6 if shape is not None else 0.2
    ax.set_xlim(pos[:, 0].min() - pad, pos[:, 0].max() + pad)
    ax.set_ylim(pos[:, 1].min() - pad, pos[:, 1].max() + pad)
    ax.axis("off")
    ax.set_title(title if title is not None else topology.name, fontsize=9)
    return ax


def plot_consensus(curves, ax=None, title="gossip: distance to the average"):
    """``curves``: {label: (errors, rho)}; errors per round (measured), rho the
    predicted rate (a dashed rho^t line; None for none). Log scale; returns ax."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for k, (label, (errs, rho)) in enumerate(curves.items()):
        errs = np.asarray(errs, dtype=float)
        t = np.arange(len(errs))
        c = f"C{k % 10}"
        ax.semilogy(t, np.maximum(errs, 1e-17), c=c, lw=1.8, label=label)
        if rho is not None and rho > 0:
            ax.semilogy(t, np.maximum(rho ** t, 1e-17), c=c, ls="--", lw=1)
    ax.set_xlabel("gossip round t")
    ax.set_ylabel("||x_t - mean|| / ||x_0 - mean||")
    ax.set_ylim(1e-16, 3)
    ax.set_title(title + " (dashed: rho^t)", fontsize=10)
    ax.legend(fontsize=8)
    return ax
