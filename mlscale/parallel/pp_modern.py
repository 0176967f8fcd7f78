"""Pipeline schedules beyond 1F1B, as pure data, and a player for them.

An operation is ``(op, microbatch, chunk)``: ``op`` is ``"F"`` (forward), ``"B"``
(backward; in a zero-bubble schedule only the gradient with respect to the input) or
``"W"`` (the gradient with respect to the weights, split off B); ``chunk`` is which of
the stage's ``v`` model chunks runs it. With ``v`` chunks per stage the model is cut
into ``p v`` virtual stages; virtual stage ``g = chunk * p + stage`` (Megatron's
layout: rank s holds layers chunks s, s + p, s + 2p, ...), so a micro-batch crosses
every rank v times.

- **Interleaved 1F1B** (Narayanan et al. 2021, "Efficient Large-Scale Language Model
  Training on GPU Clusters Using Megatron-LM", section 2.2.2, figure 4 bottom): each
  chunk takes 1/v of a stage's time, so the warm-up and cool-down shrink v times:

      makespan = (m + (p - 1) / v) (t_f + t_b),   bubble = (p - 1) / (v m + p - 1)

  (the paper's bubble time over ideal time: (p - 1) / (v m)). The order is Megatron's
  (``forward_backward_pipelining_with_interleaving``): forward number k runs chunk
  ``(k // p) % v`` of micro-batch ``(k // (p v)) p + k % p``, backward k the chunks in
  reverse; rank s warms up with ``2 (p - s - 1) + (v - 1) p`` forwards. Needs m a
  multiple of p, as Megatron does.
- **ZB-H1** (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", ICLR, section 3.1,
  figure 3 top): the backward split into B (needed by the stage before) and W (needed by
  nobody until the optimizer step). Stage s runs 1F1B with its W passes held back, the
  last s of them run in the cool-down, where 1F1B idles. Same peak activations as 1F1B;
  the bubble shrinks from (p - 1)(t_f + t_b + t_w) to (p - 1)(t_f + t_b - t_w):

      makespan = m (t_f + t_b + t_w) + (p - 1) (t_f + t_b - t_w)

:func:`play` times any such lists under the pipeline's dependencies (F of j after F of
j on the virtual stage before, B after B on the one after, or after F on the last; W
after B on the same stage) and :func:`run_on_sim` runs them on a Communicator's clock
with real messages, so the two can be compared with the formulas.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .pp_schedule import check_pipeline


class VSlot(NamedTuple):
    stage: int
    op: str  # "F", "B" or "W"
    microbatch: int
    chunk: int
    start: float
    end: float


def interleaved_schedule(num_stages, num_microbatches, num_chunks):
    """Interleaved 1F1B: per stage, the list of ``(op, microbatch, chunk)``."""
    check_pipeline(num_stages, num_microbatches)
    check_pipeline(num_stages, num_chunks)
    p, m, v = num_stages, num_microbatches, num_chunks
    if v > 1 and m % p:
        raise ValueError(f"interleaved 1F1B: num_microbatches={m} must be a multiple of num_stages={p} "
                         f"(Megatron's rule: micro-batches go round the ranks in groups of p); use m = "
                         f"{(m // p + 1) * p}, or num_chunks=1")
    total = m * v

    def fwd(k):
        return (k // (p * v)) * p + k % p, (k // p) % v

    def bwd(k):
        j, c = fwd(k)
        return j, v - 1 - c

    out = []
    for s in range(p):
        # Megatron's warm-up; with one chunk it is plain 1F1B's p - s - 1
        warm = min(total, (p - s - 1) * 2 + (v - 1) * p) if v > 1 else min(p - s - 1, m)
        ops = [("F", *fwd(k)) for k in range(warm)]
        for i in range(total - warm):
            ops += [("F", *fwd(warm + i)), ("B", *bwd(i))]
        ops += [("B", *bwd(k)) for k in range(total - warm, total)]
        out.append(ops)
    return out


def zb_h1_schedule(num_stages, num_microbatches):
    """ZB-H1: 1F1B's order with each backward split into B then W, stage s holding its
    last s W passes back until the cool-down. Per stage, ``(op, microbatch, 0)``."""
    check_pipeline(num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    out = []
    for s in range(p):
        warm = min(p - s - 1, m)
        ops, pending = [("F", j, 0) for j in range(warm)], []
        for i in range(m - warm):
            ops += [("F", warm + i, 0), ("B", i, 0)]
            pending.append(i)
            if len(pending) > s:
                ops.append(("W", pending.pop(0), 0))
        for j in range(m - warm, m):
            ops.append(("B", j, 0))
            pending.append(j)
            if len(pending) > s:
                ops.append(("W", pending.pop(0), 0))
        ops += [("W", j, 0) for j in pending]
        out.append(ops)
    return out


def _norm(ops):
    return [[(o[0], int(o[1]), int(o[2]) if len(o) > 2 else 0) for o in stage] for stage in ops]


def play(ops, num_chunks=1, t_fwd=1.0, t_bwd=2.0, t_w=None):
    """Timeline of per-stage op lists; a chunk takes 1/num_chunks of a stage's times.
    ``t_w``: the W time when the lists split the backward (B then takes ``t_bwd``).
    Returns a list of ``VSlot``, sorted by start; a ValueError names the ops that wait on
    each other if the lists can never run."""
    ops = _norm(ops)
    p, v = len(ops), num_chunks
    P = p * v
    dur = {"F": t_fwd / v, "B": t_bwd / v, "W": (t_w or 0.0) / v}
    done, nxt, free, slots = {}, [0] * p, [0.0] * p, []
    while any(nxt[s] < len(ops[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            while nxt[s] < len(ops[s]):
                op, j, c = ops[s][nxt[s]]
                g = c * p + s
                if op not in dur:
                    raise ValueError(f"stage {s}: unknown op {op!r}; use 'F', 'B' or 'W'")
                if (g, op, j) in done:
                    raise ValueError(f"stage {s} runs {op}{j}" + (f" of chunk {c}" if v > 1 else "") + " twice")
                if op == "F":
                    dep = (g - 1, "F", j) if g > 0 else None
                elif op == "B":
                    dep = (g + 1, "B", j) if g < P - 1 else (g, "F", j)
                else:
                    dep = (g, "B", j)
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep is not None else 0.0)
                done[(g, op, j)] = free[s] = start + dur[op]
                slots.append(VSlot(s, op, j, c, start, free[s]))
                nxt[s] += 1
                progressed = True
        if not progressed:
            waiting = {s: ops[s][nxt[s]] for s in range(p) if nxt[s] < len(ops[s])}
            raise ValueError(f"pipeline schedule deadlocks: each stage's next op waits for another's: {waiting}")
    return sorted(slots, key=lambda x: (x.start, x.stage))


def interleaved_makespan(p, m, v, t_fwd=1.0, t_bwd=2.0):
    """(m + (p - 1) / v) (t_f + t_b): Megatron-LM (2021), section 2.2.2."""
    return (m + (p - 1) / v) * (t_fwd + t_bwd)


def zb_h1_makespan(p, m, t_fwd=1.0, t_bwd=1.0, t_w=1.0):
    """m (t_f + t_b + t_w) + (p - 1)(t_f + t_b - t_w): Zero Bubble PP (2024), section 3.1
    (when t_w <= t_f + t_b, and m >= p)."""
    return m * (t_fwd + t_bwd + t_w) + (p - 1) * (t_fwd + t_bwd - t_w)


def peak_activations(ops, num_chunks=1):
    """Per stage, the most activations held at once, in micro-batches of a whole stage
    (a chunk's are 1/v of it): held from F until the last backward part (W where the
    lists have one, else B)."""
    out = []
    for stage in _norm(ops):
        split = any(o[0] == "W" for o in stage)
        live = peak = 0
        for op, _, _ in stage:
            live += 1 if op == "F" else (-1 if op == ("W" if split else "B") else 0)
            peak = max(peak, live)
        out.append(peak / num_chunks)
    return out


def run_on_sim(comm, ops, num_chunks=1, t_fwd=1.0, t_bwd=2.0, t_w=None, nbytes=8, xp=None):
    """Run rank ``comm.rank``'s list on the communicator: each op is ``comm.compute`` of
    its time, an F sends ``nbytes`` to the next virtual stage's rank, a B to the previous
    one's (received before the op starts). Returns this rank's clock at the end: the
    sim engine's makespan, network costs included (zero on a zero-cost network).
    ``xp``: the array module of the messages (``mlscale.meta.Meta()``: shape-only, so a
    frontier-size activation costs its bytes on the wire and no memory)."""
    p, v = comm.world_size, num_chunks
    P, s = p * v, comm.rank
    mine = _norm(ops)[s] if len(ops) == p else _norm([ops])[0]
    dur = {"F": t_fwd / v, "B": t_bwd / v, "W": (t_w or 0.0) / v}
    buf, reqs = (np if xp is None else xp).zeros(max(1, nbytes // 8)), []
    for op, j, c in mine:
        g = c * p + s
        tag = (j * P + g) * 2 + (op == "B")
        if op == "F" and g > 0:
            comm.recv((g - 1) % p, tag=tag)
        if op == "B" and g < P - 1:
            comm.recv((g + 1) % p, tag=tag)
        comm.compute(seconds=dur[op], label=op)
        if op == "F" and g < P - 1:
            reqs.append(comm.isend(buf, (g + 1) % p, tag=(j * P + g + 1) * 2))
        if op == "B" and g > 0:
            reqs.append(comm.isend(buf, (g - 1) % p, tag=(j * P + g - 1) * 2 + 1))
    for r in reqs:
        r.wait()
    return comm.clock


__all__ = ["VSlot", "interleaved_schedule", "zb_h1_schedule", "play", "interleaved_makespan", "zb_h1_makespan",
           "peak_activations", "run_on_sim"]
