"""Plots and animations from what a run recorded (``ms.launch(...).trace``).

- :func:`timeline`: Gantt chart, one row per rank, a bar per message and compute span
- :func:`link_heatmap`: bytes on every src -> dst link
- :func:`bytes_per_rank`: bytes each rank sent, against an expected line
- :func:`cost_vs_size`: every all-reduce, alpha-beta model against the simulated clock
- :func:`animate_ring` / :func:`ring_steps_figure`: the ring all-reduce, step by step

matplotlib.pyplot is imported only when a plot is drawn, so importing this module
does not pick a backend (tests call ``matplotlib.use("Agg")`` first).
"""
from .cost_plots import Sweep, all_reduce_sweep, cost_vs_size  # noqa: F401
from .ring import RingSteps, animate_ring, draw_ring_frame, ring_schedule, ring_steps, ring_steps_figure  # noqa: F401
from .trace_plots import bytes_per_rank, human_bytes, label_colors, link_heatmap, link_matrix, timeline  # noqa: F401
from .ps_plots import disagreement_plot, staleness_bars  # noqa: F401
