"""Checker for notebook 13's second exercise: fill in the interleaved 1F1B schedule.

    def interleaved_order(p, m, v):   # -> ops, ops[s] = stage s's list of ("F"|"B", microbatch, chunk)
        ...

Any order is accepted that runs every forward and backward of every micro-batch and
chunk once on each stage, never waits for itself (it is played under the pipeline's
dependencies: F of micro-batch j on virtual stage g = chunk p + s after F on g - 1, B after
B on g + 1), and reaches Megatron's makespan (m + (p - 1)/v)(t_f + t_b) (Narayanan et al.
2021, section 2.2.2). Checked for p = 1..4, v = 1..3, m = p and 2p, and two ratios of
t_b to t_f; and holding no more activations at once than Megatron's order (else it is
GPipe's memory with an interleaved bubble).
"""
from __future__ import annotations

from ..parallel.pp_modern import interleaved_makespan, interleaved_schedule, peak_activations, play
from ..parallel.pp_schedule import makespan
from .core import CheckResult, register, try_case

HINT = """\
Forward number k (k = 0 .. m v - 1) of a stage runs chunk (k // p) % v of micro-batch
(k // (p v)) p + k % p: p micro-batches go through chunk 0, then the same p through
chunk 1, ... Backward number k runs the same micro-batch with the chunks in reverse
(chunk v - 1 - (k // p) % v). Stage s warms up with w = min(m v, 2 (p - s - 1) + (v - 1) p)
forwards, then alternates one forward, one backward, then drains the backwards:
    ops = [("F", *fwd(k)) for k in range(w)]
    for i in range(m * v - w):
        ops += [("F", *fwd(w + i)), ("B", *bwd(i))]
    ops += [("B", *bwd(k)) for k in range(m * v - w, m * v)]
Still stuck? from mlscale.check import solution; solution("interleaved_order")"""


def interleaved_order_solution(p, m, v):
    """Megatron's interleaved 1F1B: per stage, ("F"|"B", microbatch, chunk)."""
    def fwd(k):
        return (k // (p * v)) * p + k % p, (k // p) % v

    def bwd(k):
        j, c = fwd(k)
        return j, v - 1 - c

    out = []
    for s in range(p):
        w = min(m * v, 2 * (p - s - 1) + (v - 1) * p) if v > 1 else min(p - s - 1, m)
        ops = [("F", *fwd(k)) for k in range(w)]
        for i in range(m * v - w):
            ops += [("F", *fwd(w + i)), ("B", *bwd(i))]
        ops += [("B", *bwd(k)) for k in range(m * v - w, m * v)]
        out.append(ops)
    return out


def _judge(ops, p, m, v):
    if not isinstance(ops, (list, tuple)) or len(ops) != p:
        return f"return a list of {p} op lists, one per stage (got {type(ops).__name__})"
    want = sorted((op, j, c) for op in "FB" for j in range(m) for c in range(v))
    for s, stage in enumerate(ops):
        try:
            got = sorted((str(o[0]), int(o[1]), int(o[2])) for o in stage)
        except (TypeError, ValueError, IndexError):
            return f"stage {s}: each op must be a tuple (\"F\" or \"B\", microbatch, chunk)"
        if got != want:
            missing = sorted(set(want) - set(got))[:3]
            extra = sorted(set(got) - set(want))[:3]
            twice = sorted({o for o in got if got.count(o) > 1})[:3]
            return (f"stage {s} must run F and B of every micro-batch 0..{m - 1} on every chunk 0..{v - 1} once: "
                    f"missing {missing}, twice {twice}, unexpected {extra}")
    for tf, tb in ((1.0, 2.0), (1.0, 1.0)):
        try:
            t = makespan(play(ops, v, tf, tb))
        except ValueError as e:
            return (f"{e}. A stage can only run F of chunk c after the stage before has (chunk c on the last "
                    "stage feeds chunk c + 1 on stage 0), and B in the reverse order; a backward placed before enough "
                    "warm-up forwards waits for one that comes after it: stage s warms up with "
                    "2 (p - s - 1) + (v - 1) p forwards")
        best = interleaved_makespan(p, m, v, tf, tb)
        if t > best + 1e-9:
            ref = makespan(play(interleaved_schedule(p, m, v), v, tf, tb))
            return (f"makespan {t:g} with t_f = {tf:g}, t_b = {tb:g}; interleaved 1F1B reaches {ref:g} = "
                    f"(m + (p - 1)/v)(t_f + t_b): too few warm-up forwards stall the steady state, too many "
                    f"delay the first backward (check the warm-up count and the chunk order)")
    ref_peak = peak_activations(interleaved_schedule(p, m, v), v)
    peak = peak_activations(ops, v)
    for s in range(p):
        if peak[s] > ref_peak[s] + 1e-9:
            return (f"stage {s} holds the activations of {peak[s] * v:g} chunk forwards at once, interleaved 1F1B "
                    f"at most {ref_peak[s] * v:g}: the makespan is right, but the memory is GPipe's. Start the "
                    f"backwards after the warm-up and alternate one forward, one backward")
    return None


def interleaved_order(fn, cases=None, verbose=True):
    """Check ``fn(p, m, v) -> per-stage op lists`` reaches Megatron's makespan."""
    res = CheckResult("interleaved_order")
    cases = cases or [(p, g * p, v) for p in (1, 2, 3, 4) for v in (1, 2, 3) for g in (1, 2)]
    for p, m, v in cases:
        if not try_case(res, f"p={p}, m={m}, v={v}", lambda p=p, m=m, v=v: fn(p, m, v),
                        lambda out, p=p, m=m, v=v: _judge(out, p, m, v)):
            return res.done(verbose)
    return res.done(verbose)


register("interleaved_order", HINT, interleaved_order_solution)

__all__ = ["interleaved_order", "interleaved_order_solution"]
