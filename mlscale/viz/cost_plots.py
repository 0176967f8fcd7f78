"""The alpha-beta-gamma model of every all-reduce against the simulated clock.

    sweep = all_reduce_sweep(p=8, sizes=[2**k for k in range(4, 23, 2)])
    cost_vs_size(sweep)                  # log-log: model (lines), sim (dots)
    cost_vs_size(sweep, measured={"mpi ring": (sizes, seconds)})   # plus real runs

Small messages are latency bound (alpha: fewest messages wins, recursive doubling);
large ones bandwidth bound (beta: least data per rank wins, ring and Rabenseifner).
MPICH switches at 2048 bytes (Thakur, Rabenseifner and Gropp 2005).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..collectives import cost

MARKERS = {"naive": "s", "tree": "^", "ring": "o", "recursive_doubling": "D", "rabenseifner": "v"}


@dataclass
class Sweep:
    """Times of every algorithm over message sizes (bytes per rank's vector).
    ``predicted[a]`` from :mod:`mlscale.collectives.cost`, ``simulated[a]`` the ``sim``
    engine's virtual time with the same ``NetworkModel``."""

    p: int
    sizes: list
    network: object
    dtype: str = "float32"
    predicted: dict = field(default_factory=dict)
    simulated: dict = field(default_factory=dict)

    @property
    def algorithms(self):
        return list(self.predicted)

    def best(self, which="simulated"):
        """The fastest algorithm at each size: a list, one name per size."""
        table = getattr(self, which)
        return [min(table, key=lambda a: table[a][i]) for i in range(len(self.sizes))]

    def crossovers(self, which="simulated"):
        """[(size, from_algorithm, to_algorithm)] where the fastest algorithm changes."""
        best = self.best(which)
        return [(self.sizes[i], best[i - 1], best[i]) for i in range(1, len(best)) if best[i] != best[i - 1]]

    def max_relative_error(self):
        """Largest |sim - model| / model over every algorithm and size."""
        return max(
            abs(s - m) / m
            for a in self.predicted
            for s, m in zip(self.simulated[a], self.predicted[a])
            if m > 0
        )


def all_reduce_sweep(p=8, sizes=None, network=None, algorithms=None, dtype="float32", progress=False):
    """Run every all-reduce ``algorithm`` on ``p`` simulated ranks for each size (bytes,
    rounded down to whole elements of ``dtype``) and record model and simulated times.
    ``progress``: a tqdm bar over the runs."""
    from ..comm import NetworkModel, launch

    network = network if network is not None else NetworkModel(alpha=1e-5, beta=1e-9)
    algorithms = list(algorithms or cost.ALL_REDUCE)
    itemsize = np.dtype(dtype).itemsize
    sizes = list(sizes if sizes is not None else [2 ** k for k in range(3, 23, 2)])
    sizes = [max(itemsize, s // itemsize * itemsize) for s in sizes]
    sw = Sweep(p, sizes, network, dtype)
    runs = [(a, n) for a in algorithms for n in sizes]
    if progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc=f"all-reduce on {p} simulated ranks", unit="run")
    for a in algorithms:
        sw.predicted[a], sw.simulated[a] = [], []
    for a, n in runs:
        x = np.ones(n // itemsize, dtype=dtype)
        res = launch(lambda comm: comm.all_reduce(x, algorithm=a), p, network=network, trace=False)
        sw.simulated[a].append(res.time)
        sw.predicted[a].append(cost.all_reduce(a, p, n, network.alpha, network.beta, network.gamma))
    return sw


def cost_vs_size(sweep=None, p=8, sizes=None, network=None, measured=None, ax=None, title=None,
                 shade=True, progress=False):
    """Log-log plot of all-reduce time against message size: the model as lines, the
    simulated clock as dots (they sit on the lines), and ``measured`` runs if given
    (``{name: (sizes, seconds)}``, e.g. real MPI processes). ``shade``: colour the size
    axis by which algorithm the simulation finds fastest. Runs the sweep when not given.
    Returns the axes; ``ax.sweep`` is the ``Sweep`` drawn."""
    import matplotlib
    import matplotlib.pyplot as plt

    sw = sweep if sweep is not None else all_reduce_sweep(p, sizes, network, progress=progress)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.4))
    cmap = matplotlib.colormaps["tab10"]
    colors = {a: cmap(i) for i, a in enumerate(cost.ALL_REDUCE)}
    for a in sw.algorithms:
        col = colors.get(a, "k")
        ax.loglog(sw.sizes, sw.predicted[a], "-", color=col, lw=1.5, alpha=0.8, label=f"{a} (model)")
        ax.loglog(sw.sizes, sw.simulated[a], MARKERS.get(a, "o"), color=col, ms=5, mfc="none",
                  label=f"{a} (sim)")
    for i, (name, (xs, ts)) in enumerate((measured or {}).items()):
        ax.loglog(xs, ts, "*--", color=cmap(5 + i % 5), ms=9, lw=1, label=name)
    if shade and len(sw.sizes) > 1:
        best = sw.best("simulated")
        edges = np.sqrt(np.array(sw.sizes[:-1]) * np.array(sw.sizes[1:]))
        lo = np.concatenate([[sw.sizes[0] / 1.5], edges])
        hi = np.concatenate([edges, [sw.sizes[-1] * 1.5]])
        for b, l, h in zip(best, lo, hi):
            ax.axvspan(l, h, ymin=0, ymax=0.03, color=colors.get(b, "k"), alpha=0.9, lw=0)
        ax.set_xlim(lo[0], hi[-1])
    net = sw.network
    ax.set_xlabel("message size n (bytes per rank); strip at the bottom: fastest in the simulation")
    ax.set_ylabel("all-reduce time (s)")
    ax.set_title(title if title is not None else
                 f"all-reduce on {sw.p} ranks, alpha = {net.alpha * 1e6:g} µs, beta = {net.beta:g} s/B "
                 f"({1e-9 / net.beta:g} GB/s)" if net.beta else f"all-reduce on {sw.p} ranks",
                 fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left")
    ax.sweep = sw
    return ax
