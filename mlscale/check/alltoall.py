"""Checker for notebook 13's exercise: the pairwise all-to-all on send/recv.

    def pairwise_all_to_all(comm, pieces):   # pieces[j]: what this rank sends rank j
        ...                                  # -> got, got[i] = what rank i sent me

Checked on 1, 2, 3, 4, 5 and 8 simulated ranks (odd ones included: no XOR pairing there)
against the transpose computed in one process, pieces of different lengths and dtypes,
then above the eager limit (a blocking send then recv deadlocks there); and the
traffic: every rank sends exactly p - 1 messages, one to each other rank (its own piece
never goes on the wire), with no collective (the point is to write it on send/recv).
"""
from __future__ import annotations

import numpy as np

from ..comm import launch
from ..comm.network import NetworkModel
from .core import CheckResult, register, try_case
from .parallel import _CountingComm

HINT = """\
Step k = 1 .. p-1: send to (r + k) % p the piece meant for it, and receive from
(r - k) % p the piece it meant for you. sendrecv does both at once, so no rank waits for
a neighbour that is itself waiting (a blocking send then recv deadlocks once a piece is
above the eager limit):
    p, r = comm.world_size, comm.rank
    got = [None] * p
    got[r] = pieces[r].copy()              # my own piece never goes on the wire
    for k in range(1, p):
        dst, src = (r + k) % p, (r - k) % p
        got[src] = comm.sendrecv(pieces[dst], dst, src, tag=k)
    return got
Still stuck? from mlscale.check import solution; solution("pairwise_all_to_all")"""


def pairwise_all_to_all_solution(comm, pieces):
    """Pairwise exchange: in step k, send to r + k and receive from r - k."""
    p, r = comm.world_size, comm.rank
    got = [None] * p
    got[r] = pieces[r].copy()
    for k in range(1, p):
        dst, src = (r + k) % p, (r - k) % p
        got[src] = comm.sendrecv(pieces[dst], dst, src, tag=k)
    return got


def _pieces(p, seed, big=False, dtype=np.float64):
    """pieces[i][j]: what rank i sends rank j, each one recognisable (value 1000 i + j)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(p):
        row = []
        for j in range(p):
            n = 20000 if big else int(rng.integers(1, 5))
            row.append(np.full(n, 1000 * i + j, dtype=dtype) + np.arange(n, dtype=dtype) * 1e-3)
        out.append(row)
    return out


def _judge(out, pieces, p):
    got = [o[0] for o in out]
    for r in range(p):
        g = got[r]
        if g is None:
            return f"rank {r} returned None; return the list got, got[i] = the piece rank i sent"
        if len(g) != p:
            return f"rank {r} returned {len(g)} pieces; return one per rank ({p})"
        for i in range(p):
            want = pieces[i][r]
            have = np.asarray(g[i]) if g[i] is not None else None
            if have is None or have.shape != want.shape or not np.array_equal(have, want):
                if have is not None and have.shape == pieces[r][i].shape and np.array_equal(have, pieces[r][i]):
                    return (f"rank {r}: got[{i}] is the piece rank {r} sent to rank {i}: you kept your own "
                            f"pieces; got[{i}] must be what rank {i} sent YOU (its pieces[{r}])")
                for q in range(p):
                    if have is not None and have.shape == pieces[q][r].shape and np.array_equal(have, pieces[q][r]):
                        return (f"rank {r}: got[{i}] holds what rank {q} sent (in step k you receive from "
                                f"(r - k) % p: store it in got[(r - k) % p])")
                return f"rank {r}: got[{i}] is wrong: expected what rank {i} sent it ({want[:3]}...), got {have}"
    for r, (_, calls, nmsg, dsts) in enumerate(out):
        if calls:
            return f"rank {r} called {calls}: write it on send/recv (sendrecv), no collective"
        if nmsg != p - 1 or sorted(dsts) != sorted(q for q in range(p) if q != r):
            return (f"rank {r} sent {nmsg} messages to {sorted(dsts)}; pairwise sends exactly one to each other "
                    f"rank (p - 1 = {p - 1}), and its own piece never goes on the wire")
    return None


def pairwise_all_to_all(fn, world_sizes=(1, 2, 3, 4, 5, 8), verbose=True):
    """Check ``fn(comm, pieces) -> got``: got[i] is what rank i sent this rank."""
    res = CheckResult("pairwise_all_to_all")
    cases = [(p, False, np.float64) for p in world_sizes] + [(3, False, np.int32), (4, True, np.float64)]
    for p, big, dtype in cases:
        pieces = _pieces(p, seed=p + 10 * big, big=big, dtype=dtype)
        case = f"p={p}" + (", pieces of 160 KB (above the eager limit)" if big else f", {np.dtype(dtype).name}")

        def prog(comm, pieces=pieces):
            counted = _CountingComm(comm)
            before = comm.messages_sent
            got = fn(counted, [a.copy() for a in pieces[comm.rank]])
            return got, counted.calls, comm.messages_sent - before, None

        def run(prog=prog, p=p):
            r = launch(prog, p, network=NetworkModel())
            msgs = r.trace.messages
            return [(g, c, n, [m.dst for m in msgs if m.src == rank]) for rank, (g, c, n, _) in enumerate(r)]

        hint = (" In step k every rank sends first and receives second: above the eager limit each send "
                "waits for its receiver, who is sending too. Use comm.sendrecv (or irecv before send).") if big else ""
        if not try_case(res, case, run, lambda out, pieces=pieces, p=p: _judge(out, pieces, p), hint):
            return res.done(verbose)
    return res.done(verbose)


register("pairwise_all_to_all", HINT, pairwise_all_to_all_solution)

__all__ = ["pairwise_all_to_all", "pairwise_all_to_all_solution"]
