"""Kernels against the memory bound: grouped bars of GB/s, one group per op.

    t = mlscale.ops.roofline.throughput(...)          # per op: {impl: GB/s}
    bandwidth_bars({"adam_step": {"reference": 9.1, "numba": 66.0}}, bounds={"add": 82.0})

A memory-bound kernel cannot beat the memory bandwidth (roofline model, Williams,
Waterman and Patterson 2009): the dashed lines are the bounds, the bars how close each
implementation gets. matplotlib.pyplot is imported only when a plot is drawn.
"""
from __future__ import annotations

import numpy as np


def bandwidth_bars(gb_s: dict, bounds: dict | None = None, ax=None, title: str | None = None,
                   unit: str = "GB/s"):
    """Grouped bars: ``gb_s`` = {op: {impl: GB/s}} (one group per op, one colour per
    impl), and per entry of ``bounds`` = {label: GB/s} a dashed line across the plot, or,
    for {label: {op: GB/s}} (a bound measured with each op), a dashed segment over each
    op's group. Returns the Axes."""
    if not gb_s:
        raise ValueError("bandwidth_bars: gb_s is empty; pass {op: {impl: GB/s}}")
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.subplots(figsize=(8, 3.6))[1]
    ops_ = list(gb_s)
    impls = list(dict.fromkeys(k for v in gb_s.values() for k in v))
    width = 0.8 / len(impls)
    x = np.arange(len(ops_))
    for j, impl in enumerate(impls):
        vals = [gb_s[op].get(impl, np.nan) for op in ops_]
        bars = ax.bar(x + (j - (len(impls) - 1) / 2) * width, vals, width, label=impl)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center",
                            va="bottom", fontsize="x-small")
    for k, (label, v) in enumerate((bounds or {}).items()):
        color = f"C{len(impls) + k}"
        if isinstance(v, dict):
            missing = set(v) - set(ops_)
            if missing:
                raise ValueError(f"bandwidth_bars: bound {label!r} names ops {sorted(missing)} "
                                 f"that are not in gb_s ({ops_})")
            xs = [ops_.index(op) for op in v]
            ax.hlines(list(v.values()), [i - 0.45 for i in xs], [i + 0.45 for i in xs],
                      colors=color, linestyles="--", lw=1.2, label=label)
        else:
            ax.axhline(v, color=color, ls="--", lw=1.2, label=f"{label}: {v:.3g} {unit}")
    ax.set_xticks(x)
    ax.set_xticklabels(ops_)
    ax.set_ylabel(unit)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax
