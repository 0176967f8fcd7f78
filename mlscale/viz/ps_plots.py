"""Plots for parameter servers and model averaging (notebooks 04 and 05).

- :func:`staleness_bars`: side-by-side histograms of how stale the applied gradients were
  (in server updates, or in clocks via :func:`mlscale.train.param_server.clock_lag`),
  with each run's bound drawn as a dashed line
- :func:`disagreement_plot`: the ranks' parameter disagreement step by step (the local SGD
  sawtooth: it grows between averages and drops to zero at each)

Each function draws on ``ax`` (a new figure when None) and returns the axes; the bar
heights and line data are the numbers passed in, so a test can read them back.
"""
from __future__ import annotations

import numpy as np


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def staleness_bars(values, ax=None, bounds=None, max_value=None, xlabel="staleness", title=None):
    """Grouped histograms: ``values`` is ``{name: sequence of non-negative ints}`` (e.g. a
    server History's ``.staleness``, or ``clock_lag(history)``); ``bounds`` an optional
    ``{name: bound}`` drawn as dashed vertical lines in the run's colour. Values above
    ``max_value`` (default: the largest) are counted in the last bar, marked "+"."""
    if not values:
        raise ValueError("staleness_bars: pass {name: list of staleness values}, got nothing")
    ax = _axes(ax, (6, 3.4))
    arrays = {k: np.asarray(list(v), dtype=np.int64) for k, v in values.items()}
    for k, a in arrays.items():
        if a.size and a.min() < 0:
            raise ValueError(f"staleness_bars: {k!r} has a negative staleness {int(a.min())}")
    top = max_value if max_value is not None else max(int(a.max()) if a.size else 0 for a in arrays.values())
    width = 0.8 / len(arrays)
    for i, (name, a) in enumerate(arrays.items()):
        counts = np.bincount(np.minimum(a, top), minlength=top + 1)
        xs = np.arange(top + 1) + (i - (len(arrays) - 1) / 2) * width
        bars = ax.bar(xs, counts, width, label=name)
        if bounds and name in bounds and bounds[name] is not None:
            ax.axvline(bounds[name] + 0.5, color=bars.patches[0].get_facecolor(), ls="--", lw=1)
    ticks = list(range(top + 1))
    ax.set_xticks(ticks, [str(t) for t in ticks[:-1]] + [f"{top}+" if max_value is not None else str(top)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gradients")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")
    return ax


def disagreement_plot(curves, ax=None, log=True, floor=None, title="drift between the ranks' models"):
    """``curves``: ``{label: per-step disagreement}`` (see
    :func:`mlscale.train.local_sgd.model_disagreement`), drawn against the step number
    (1-based: the value after that step). On a log axis the zeros, right after an
    average, are drawn at ``floor`` (default: a third of the smallest positive value)
    with a triangle; pass the same ``floor`` to panels that share an axis."""
    ax = _axes(ax, (7, 3.4))
    positive = [v for c in curves.values() for v in c if v > 0]
    if not log or not positive:
        floor = None
    elif floor is None:
        floor = min(positive) / 3
    for label, c in curves.items():
        c = np.asarray(c, dtype=np.float64)
        steps = np.arange(1, len(c) + 1)
        line, = ax.plot(steps, np.where(c > 0, c, floor) if floor else c, lw=1.2, label=label)
        if floor:
            zero = c == 0
            ax.plot(steps[zero], np.full(zero.sum(), floor), "v", color=line.get_color(), ms=5)
    if floor:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared distance to the average" + (" (v: 0, averaged)" if floor else ""))
    ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")
    return ax
