"""mlscale bench alltoall: mlscale's all-to-all algorithms against MPI's own, side by
side in one run, then the alpha-beta model on the simulator (Bruck against pairwise).

    mlscale bench alltoall                   # 4 MPI ranks, 1 KiB .. 16 MiB per rank
    mlscale bench alltoall --quick           # a short run (a smoke test)
    mlscale bench alltoall -n 2 --out alltoall.md

1. ``mpi``: on N ranks (default 4), for each size S (the bytes every rank sends in all,
   S/p to each rank, its own piece included) MPI's ``Alltoallv`` ("native") and
   mlscale's pairwise, Bruck and linear (written on send/recv), argument validation
   off for all (``comm.check = False``), one warm-up call each checked against the
   transpose, then repeats taken round-robin over the algorithms, a barrier before
   each; a repeat's time is the slowest rank's. Reported: best and median time, busbw
   (nccl-tests' alltoall: algbw (p-1)/p) from the median, and the ratio to native.
2. ``sim``: the virtual time of pairwise and Bruck on 8 ranks against
   :func:`mlscale.collectives.cost.all_to_all`, on an alpha-beta network, small to
   large pieces: Bruck (lg p messages, each byte moving up to lg p times) wins small,
   pairwise (p-1 messages, each byte once) wins large.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from . import Report, busbw, fmt_bw, fmt_bytes, fmt_time, machine, slowest_over_ranks, time_round_robin

ALGOS = ("native", "pairwise", "bruck", "linear")
SIZES = [1 << 10 << (2 * i) for i in range(8)]  # 1 KiB, 4 KiB, ..., 16 MiB per rank
QUICK_SIZES = [1 << 10, 64 << 10, 1 << 20]


def _repeats(nbytes, quick):
    return 3 if quick else int(min(50, max(10, 2e8 // max(nbytes, 1))))


def _mpi_part(comm, sizes, algos, quick):
    from mpi4py import MPI

    comm.check = False
    p, r = comm.world_size, comm.rank
    keys, times = [], []
    for nbytes in sizes:
        m = max(nbytes // (4 * p), 1)  # float32 per piece
        x = (np.arange(p * m, dtype=np.float32) + r * p * m)  # element k of rank i: i p m + k
        want = np.concatenate([np.arange(r * m, (r + 1) * m, dtype=np.float32) + i * p * m for i in range(p)])
        calls = {a: (lambda a=a: comm.all_to_all(x, algorithm=None if a == "native" else a)) for a in algos}
        for a in algos:
            if not np.array_equal(calls[a](), want):
                raise RuntimeError(f"all_to_all {a} on {fmt_bytes(nbytes)} gave a wrong result")
        per = time_round_robin(comm, calls, algos, _repeats(nbytes, quick))
        for a in algos:
            keys.append((p * m * 4, a))
            times.append(per[a])
    measured = slowest_over_ranks(comm, keys, times)
    if r:
        return None
    return {"p": p, "measured": measured, "mpi": MPI.Get_library_version().splitlines()[0].strip()}


def _mpi_table(rep, res, algos):
    p, meas = res["p"], res["measured"]
    med = {k: float(np.median(v)) for k, v in meas.items()}
    best = {k: float(np.min(v)) for k, v in meas.items()}
    rows = []
    for nb in sorted({k[0] for k in meas}):
        for a in algos:
            rows.append([fmt_bytes(nb), a, fmt_time(best[(nb, a)]), fmt_time(med[(nb, a)]),
                         fmt_bw(busbw("all_to_all", p, nb, med[(nb, a)])),
                         f"{med[(nb, 'native')] / med[(nb, a)]:.2f}"])
    rep.table(["bytes per rank", "algorithm", "best", "median", "busbw GB/s", "native time / this"], rows,
              align="lrrrrr", title=f"All-to-all on {p} MPI ranks, float32 (busbw from the median time)")


def _sim_table(rep, p=8, alpha=1e-5, beta=1e-9):
    from ..collectives import cost
    from ..comm.launch import launch
    from ..comm.network import NetworkModel

    net = NetworkModel(alpha=alpha, beta=beta)
    rows = []
    for piece in (32, 256, 4096, 65536, 1 << 20):
        n = piece * p
        row = [fmt_bytes(n)]
        for a in ("pairwise", "bruck"):
            t = launch(lambda c, a=a: c.all_to_all(np.zeros(n, np.uint8), algorithm=a), p, network=net).time
            pred = cost.all_to_all(a, p, n, alpha, beta)
            row.append(f"{fmt_time(t)} / {fmt_time(pred)}")
        tp = cost.all_to_all("pairwise", p, n, alpha, beta)
        tb = cost.all_to_all("bruck", p, n, alpha, beta)
        row.append("bruck" if tb < tp else "pairwise")
        rows.append(row)
    rep.table(["bytes per rank", "pairwise: sim / model", "bruck: sim / model", "faster"], rows, align="lrrr",
              title=f"sim engine, {p} ranks, alpha = {alpha * 1e6:.0f} us, beta = {beta * 1e9:.0f} ns/byte: "
                    "virtual time against mlscale.collectives.cost.all_to_all")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mlscale bench alltoall", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--ranks", type=int, default=4, help="MPI ranks (default 4)")
    ap.add_argument("--quick", action="store_true", help="3 sizes, 3 repeats: a smoke test")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    ap.add_argument("--no-mpi", action="store_true", help="skip the MPI part")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the MPI run")
    ns = ap.parse_args(argv)
    rep = Report()
    cmd = "mlscale bench alltoall" + (" " + " ".join(argv) if argv else "")
    rep.add(f"Command: `{cmd}`  \nMachine: {machine()}\n")
    if not ns.no_mpi:
        from ..comm.mpi import launch_mpi

        t0 = time.perf_counter()
        res = launch_mpi(_mpi_part, ns.ranks, (QUICK_SIZES if ns.quick else SIZES, ALGOS, ns.quick),
                         timeout=ns.timeout)[0]
        rep.add(f"MPI: {res['mpi']}; {ns.ranks} ranks; run took {time.perf_counter() - t0:.0f} s.\n")
        _mpi_table(rep, res, ALGOS)
    _sim_table(rep)
    if ns.out:
        rep.write(ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
