"""Pipeline schedules as pure data: which stage runs which micro-batch's forward or
backward, in what order, and when.

A model cut into p stages (one per rank) processes a batch split into m micro-batches.
Stage s runs forward ``F`` of micro-batch j after stage s-1 has, and backward ``B`` of j
after stage s+1 has. Two schedules (each a list, per stage, of ``(op, microbatch)``):

- **GPipe** (Huang et al. 2019): all m forwards, then all m backwards. Every stage
  stashes the activations of all m micro-batches before its first backward.
- **1F1B** (PipeDream-Flush, Narayanan et al. 2021, "Efficient Large-Scale Language
  Model Training on GPU Clusters Using Megatron-LM", figure 4 top): stage s runs
  ``p - s - 1`` warm-up forwards, then alternates one forward, one backward, then
  drains the remaining backwards. It keeps at most ``p - s`` micro-batches of
  activations in flight instead of m, for the same bubble.

Both have the same **bubble** (idle fraction of each stage) when every stage takes
``t_fwd`` per forward and ``t_bwd`` per backward: the pipeline takes
``(m + p - 1)(t_fwd + t_bwd)``, each stage computes ``m (t_fwd + t_bwd)`` of it, so

    bubble = (p - 1) / (m + p - 1)          (GPipe paper, section 2.2)

:func:`timeline` plays a schedule under those dependencies (no network cost) and
returns one ``Slot(stage, op, microbatch, start, end)`` per operation: what the
notebook draws as a Gantt chart, and what :mod:`pipeline` must reproduce on the
simulator's clocks.
"""
from __future__ import annotations

from typing import NamedTuple

SCHEDULES = ("gpipe", "1f1b")


class Slot(NamedTuple):
    stage: int
    op: str  # "F" or "B"
    microbatch: int
    start: float
    end: float


def check_pipeline(num_stages, num_microbatches):
    for name, v in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"pipeline: {name}={v!r} must be a whole number >= 1")


def gpipe_schedule(num_stages, num_microbatches):
    """GPipe: per stage, F0 .. F(m-1) then B0 .. B(m-1)."""
    check_pipeline(num_stages, num_microbatches)
    m = num_microbatches
    one = [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
    return [list(one) for _ in range(num_stages)]


def one_f_one_b_schedule(num_stages, num_microbatches):
    """1F1B (PipeDream-Flush): warm-up forwards, then one forward one backward, then
    the remaining backwards. Stage s warms up with min(p - s - 1, m) forwards."""
    check_pipeline(num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    out = []
    for s in range(p):
        warm = min(p - s - 1, m)
        ops = [("F", j) for j in range(warm)]
        for i in range(m - warm):  # steady state
            ops += [("F", warm + i), ("B", i)]
        ops += [("B", j) for j in range(m - warm, m)]  # cool-down
        out.append(ops)
    return out


def stage_ops(num_stages, num_microbatches, schedule="1f1b"):
    """Per stage, the ordered list of ``(op, microbatch)`` of ``schedule``."""
    if schedule == "gpipe":
        return gpipe_schedule(num_stages, num_microbatches)
    if schedule == "1f1b":
        return one_f_one_b_schedule(num_stages, num_microbatches)
    raise ValueError(f"unknown pipeline schedule {schedule!r}: use one of {SCHEDULES}")


def timeline(num_stages, num_microbatches, schedule="1f1b", t_fwd=1.0, t_bwd=2.0):
    """Play ``schedule`` with the pipeline's dependencies; return the ``Slot`` list,
    sorted by start time then stage. Raises ValueError if the per-stage orders can never
    run (a stage waits for an operation that waits for it)."""
    ops = stage_ops(num_stages, num_microbatches, schedule) if isinstance(schedule, str) else schedule
    return play(ops, t_fwd, t_bwd)


def play(ops, t_fwd=1.0, t_bwd=2.0):
    """Timeline of per-stage op lists ``ops[s] = [(op, microbatch), ...]``: each op starts
    when its stage is free and its input has arrived (F of j on s-1, B of j on s+1; the
    last stage's B of j needs only its own F of j). The F/B case of ``pp_modern.play``
    (which also plays virtual chunks and split backwards); only 'F' and 'B' are taken here."""
    from .pp_modern import play as play_chunks

    for s, stage_list in enumerate(ops):
        for o in stage_list:
            if o[0] not in ("F", "B"):
                raise ValueError(f"stage {s}: unknown op {o[0]!r}; use 'F' or 'B'")
    slots = play_chunks(ops, 1, t_fwd, t_bwd)
    return [Slot(x.stage, x.op, x.microbatch, x.start, x.end) for x in slots]


def makespan(slots):
    return max((s.end for s in slots), default=0.0)


def bubble_fraction(num_stages, num_microbatches):
    """(p - 1) / (m + p - 1): the idle fraction of every stage (GPipe, section 2.2)."""
    check_pipeline(num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    return (p - 1) / (m + p - 1)


def measured_bubble(slots, num_stages=None):
    """Idle fraction of the stages over the whole run: 1 - busy / (p * makespan)."""
    p = num_stages or (max(s.stage for s in slots) + 1)
    busy = sum(s.end - s.start for s in slots)
    return 1.0 - busy / (p * makespan(slots))


def peak_in_flight(ops):
    """Per stage, the most micro-batches whose forward ran and whose backward has not:
    the activations a stage must stash (GPipe: m; 1F1B: at most p - s)."""
    out = []
    for stage_list in ops:
        live = peak = 0
        for op, _ in stage_list:
            live += 1 if op == "F" else -1
            peak = max(peak, live)
        out.append(peak)
    return out


def plot_schedule(slots, ax=None, title=None, num_stages=None):
    """Gantt chart of a timeline: a row per stage, forward light, backward dark, each
    box labelled with its micro-batch. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 2.4))
    p = num_stages or (max(s.stage for s in slots) + 1)
    colors = {"F": "#9ecae1", "B": "#3182bd", "W": "#31a354"}  # W: a zero-bubble schedule's weight grads
    for s in slots:
        ax.barh(s.stage, s.end - s.start, left=s.start, color=colors[s.op], edgecolor="k", linewidth=0.5)
        ax.text((s.start + s.end) / 2, s.stage, f"{s.microbatch}", ha="center", va="center", fontsize=7,
                color="k" if s.op == "F" else "w")
    ax.set_yticks(range(p), [f"stage {i}" for i in range(p)])
    ax.invert_yaxis()
    ax.set_xlabel("time")
    if title:
        ax.set_title(title)
    return ax


__all__ = ["Slot", "SCHEDULES", "gpipe_schedule", "one_f_one_b_schedule", "stage_ops", "timeline", "play",
           "makespan", "bubble_fraction", "measured_bubble", "peak_in_flight", "plot_schedule",
           "check_pipeline"]
