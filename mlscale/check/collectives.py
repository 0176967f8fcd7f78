"""Checkers for the collectives exercises (notebook 02)."""
from __future__ import annotations

import numpy as np

from ..comm import NetworkModel, launch
from . import solutions
from .core import CheckResult, register, try_case

RING_HINT = """\
Ring all-reduce in two phases, each p-1 steps; every rank sends right and receives left:
  chunks = np.array_split(x.copy(), p)     # works when len(x) is not a multiple of p
  1. reduce-scatter: at step s send chunk (r - s) % p, receive chunk (r - s - 1) % p
     and ADD it to yours. After p-1 steps, chunk (r + 1) % p is the full sum.
  2. all-gather: at step s send chunk (r + 1 - s) % p, receive chunk (r - s) % p and
     COPY it in.
Use comm.sendrecv(x, dst=right, src=left) so no rank waits for a neighbour that waits
for it. Each rank then sends 2(p-1) chunks: 2(p-1)/p of the data, whatever p is.
Still stuck? from mlscale.check import solution; solution("ring_all_reduce")"""


def _inputs(rank, n, dtype):
    rng = np.random.default_rng(7919 * rank + n)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-1000, 1000, size=n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def ring_all_reduce(fn, world_sizes=(1, 2, 3, 5, 8), verbose=True):
    """Check a learner's ``fn(comm, x) -> sum over ranks of x``, written on send/recv.

    For each world size (1, 2, 3, 5, 8 by default) and awkward lengths (1, p-1, p,
    2p+1, 1000) in float64 and int64, on simulated ranks: every rank's result must
    equal the sum over ranks, and every rank must send between 2(p-1) floor(n/p) and
    2(p-1) ceil(n/p) elements, 2(p-1)/p of the data as a ring does, in 2(p-1)
    messages, without calling the library's own collectives.
    """
    res = CheckResult("ring_all_reduce")
    net = NetworkModel(alpha=1e-6, beta=1e-9)
    for p in world_sizes:
        for n in sorted({1, max(p - 1, 1), p, 2 * p + 1, 1000}):
            for dtype in (np.float64, np.int64):
                case = f"p={p}, n={n}, {np.dtype(dtype).name}"
                xs = [_inputs(r, n, dtype) for r in range(p)]
                want = np.sum(np.stack(xs), axis=0)

                def prog(comm):
                    x = xs[comm.rank].copy()
                    return fn(comm, x)

                def judge(out):
                    bad = _check_values(out, want, dtype)
                    if bad:
                        return bad + _which_chunk(out, xs)
                    return _check_traffic(
                        out.trace, p, n, np.dtype(dtype).itemsize)

                if not try_case(res, case, lambda: launch(prog, p, network=net), judge, RING_DEADLOCK):
                    return res.done(verbose)
    # one case with chunks above the eager limit: a blocking send there waits for the receive
    # to be posted, so a ring of "send, then recv" on every rank deadlocks (as on MPI)
    p = 4
    n = p * (net.eager_limit // 8 + 1000)
    xs = [_inputs(r, n, np.float64) for r in range(p)]
    want = np.sum(np.stack(xs), axis=0)
    try_case(res, f"p={p}, n={n}, float64 (chunks of {n // p * 8} B, above the eager limit of "
                  f"{net.eager_limit} B)",
             lambda: launch(lambda comm: fn(comm, xs[comm.rank].copy()), p, network=net),
             lambda out: _check_values(out, want, np.float64) or _check_traffic(out.trace, p, n, 8),
             deadlock_hint=EAGER_DEADLOCK)
    return res.done(verbose)


RING_DEADLOCK = (
    " In a ring every rank sends to its RIGHT neighbour (r + 1) % p and receives from its LEFT "
    "neighbour (r - 1) % p, the one that sends to it: a receive from any other rank waits for a "
    "message that never comes. Every rank must also make the same number of steps.")

EAGER_DEADLOCK = (
    " every rank is inside a blocking send and nobody has posted the receive. Small messages "
    "are sent eagerly (the send returns at once), large ones wait for the receiver (MPI does "
    "the same above its eager limit), so 'send to the right, then recv from the left' on every "
    "rank deadlocks once a chunk is large. Post the receive first (req = comm.irecv(left); "
    "comm.send(chunk, right); data = req.wait()), or use comm.sendrecv.")


def _check_values(out, want, dtype):
    for r, y in enumerate(out):
        if y is None:
            return f"rank {r} returned None: return the summed array"
        y = np.asarray(y)
        if y.shape != want.shape:
            return f"rank {r} returned shape {y.shape}, expected {want.shape}"
        if np.dtype(dtype).kind == "i":
            if not np.array_equal(y, want):
                i = int(np.argmax(y != want))
                return f"rank {r}: element {i} is {y[i]}, the sum over ranks is {want[i]}"
        elif not np.allclose(y, want, rtol=1e-10, atol=1e-10):
            i = int(np.argmax(~np.isclose(y, want, rtol=1e-10, atol=1e-10)))
            return f"rank {r}: element {i} is {y[i]:.6g}, the sum over ranks is {want[i]:.6g}"
    return None


def _which_chunk(out, xs):
    """What a wrong ring result holds, chunk by chunk, when it can be told: each chunk of
    rank r's result is matched against the sums over every subset of ranks' inputs."""
    from itertools import combinations

    p = len(xs)
    if p < 2 or p > 8 or xs[0].size < p:
        return ""
    lo = np.cumsum([0] + [len(c) for c in np.array_split(xs[0], p)])
    for r, y in enumerate(out):
        y = np.asarray(y)
        if y.shape != xs[0].shape:
            return ""
        held = []
        for c in range(p):
            part = slice(lo[c], lo[c + 1])
            held.append(next((set(S) for k in range(1, p + 1) for S in combinations(range(p), k)
                              if np.allclose(y[part], sum(xs[i][part] for i in S), rtol=1e-10, atol=1e-10)),
                             None))
        if all(h == set(range(p)) for h in held):
            continue
        if all(h is not None and len(h) == 1 for h in held) and held != [{r}] * p:
            return (f". Rank {r}: every chunk holds ONE rank's values (ranks {[min(h) for h in held]}): "
                    "either the reduce-scatter overwrote the received chunk instead of ADDING it "
                    "(chunks[i] += got), or the all-gather sent chunks that were not finished (at step s "
                    "it sends chunk (r + 1 - s) % p, the one the reduce-scatter completed)")
        done = (r + 1) % p
        if held[done] == set(range(p)) and all(h is not None and h != set(range(p))
                                               for c, h in enumerate(held) if c != done):
            return (f". Rank {r}: only chunk {done} = (r + 1) % p holds the full sum, the others hold "
                    "partial sums of the reduce-scatter: the all-gather phase is missing or does not copy "
                    "the received chunks in (at step s send chunk (r + 1 - s) % p, copy into (r - s) % p)")
        c = next(c for c, h in enumerate(held) if h != set(range(p)))
        what = ("matches no sum of the ranks' inputs" if held[c] is None else
                f"holds the sum over ranks {sorted(held[c])} only, not all {p}")
        return (f". Rank {r}: chunk {c} (elements {lo[c]}..{lo[c + 1] - 1}) {what}: a chunk sent before "
                "it was complete (reduce-scatter: send (r - s) % p, add into (r - s - 1) % p; "
                "all-gather: send (r + 1 - s) % p, copy into (r - s) % p)")
    return ""


def _check_traffic(trace, p, n, itemsize):
    if p == 1:
        return None if len(trace) == 0 else "with one rank there is nothing to send"
    lib = [m.label for m in trace.messages if m.label]
    if lib:
        return f"uses the library's collectives ({lib[0]}): build it from send/recv"
    lo = 2 * (p - 1) * (n // p) * itemsize
    hi = 2 * (p - 1) * (-(-n // p)) * itemsize
    sent = trace.per_rank_bytes()
    for r, b in enumerate(sent):
        if not lo <= b <= hi:
            return (
                f"rank {r} sent {b} bytes; a ring sends 2(p-1)/p of the data = {lo}..{hi} bytes "
                f"here (all ranks: {sent})"
            )
    if sum(sent) != 2 * (p - 1) * n * itemsize:
        return f"ranks sent {sum(sent)} bytes in all; a ring sends 2(p-1) n = {2 * (p - 1) * n * itemsize}"
    counts = [0] * p
    for m in trace.messages:
        counts[m.src] += 1
    if any(c != 2 * (p - 1) for c in counts):
        return f"messages per rank {counts}; a ring sends 2(p-1) = {2 * (p - 1)} from each rank"
    return None


register("ring_all_reduce", RING_HINT, solutions.ring_all_reduce)
