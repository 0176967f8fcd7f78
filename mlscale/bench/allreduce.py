"""mlscale bench allreduce: mlscale's all-reduce algorithms against MPI's own, side by
side in one run, then the alpha-beta model against the clock, then the simulator's speed.

    mlscale bench allreduce                  # 4 MPI ranks, 4 KiB .. 64 MiB float32
    mlscale bench allreduce --quick          # a short run (a smoke test)
    mlscale bench allreduce -n 2 --out allreduce.md
    mlscale bench allreduce --no-torch       # without the torch.distributed (gloo) part

1. ``mpi``: on N ranks (default 4) every size from 4 KiB to 64 MiB, MPI's native
   ``Allreduce`` and every mlscale algorithm (written on send/recv) in one run, with
   argument validation off for all (``comm.check = False``), one warm-up call each
   (checked against the exact sum), then repeats taken round-robin over the algorithms
   (so a slow spell of the machine hits them all alike), a barrier before each. A
   repeat's time is the slowest rank's. Reported: best and median time, algbw and
   busbw (nccl-tests: algbw = S/t, busbw = algbw 2(p-1)/p) from the median, and the
   ratio of mlscale's ring busbw to native at 16 and 64 MiB (target >= 0.9).
2. Ping-pongs fit alpha and beta (least squares on relative error, so small and large
   messages both count): "idle" between ranks 0 and 1 while the others sleep, "busy"
   with every rank at once in pairs, the contention a collective meets when ranks
   outnumber cores; gamma is one ``np.add`` over 16 MiB. ``mlscale.collectives.cost``
   then predicts every algorithm's time from the busy fit, shown against the measured.
3. ``sim``: the simulator's cost per message (ping-pong of 1-element arrays, wall time
   per message; target < 20 us) and a ring all-reduce of 64 MiB over 8 simulated
   ranks against summing the 8 inputs with NumPy in the same run (target within 3x),
   once into ``out=`` buffers made beforehand (as a training loop reuses its buffers;
   the MPI part does the same) and once into new arrays, whose first touch (8 x 64 MiB
   of page faults) the NumPy sum, with its one result, mostly does not pay.
4. ``torch`` (where torch is installed; ``--no-torch`` skips it): a second launch of the
   same N ranks with ``backend="torch"``, the same sizes and repeats: gloo's own
   ``all_reduce`` (torch.distributed, what DDP calls on CPUs) and mlscale's ring over
   ``TorchComm``'s send/recv, beside part 1's MPI ``Allreduce`` and ring: busbw and the
   ratios to gloo, from the median times.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from . import Report, algbw, busbw, fmt_bw, fmt_bytes, fmt_time, machine, slowest_over_ranks, time_round_robin

ALGOS = ("native", "ring", "rabenseifner", "recursive_doubling", "tree", "naive")
SIZES = [4 << 10 << (2 * i) for i in range(8)]  # 4 KiB, 16 KiB, ..., 64 MiB
QUICK_SIZES = [4 << 10, 256 << 10, 16 << 20]
TARGET_RATIO = 0.9
TARGET_SIM_US = 20.0
TARGET_SIM_RATIO = 3.0


def _repeats(nbytes, quick):
    if quick:
        return 3
    if nbytes >= 16 << 20:  # the sizes the 0.9x target is judged on
        return 20
    return int(min(40, max(10, 2e8 // max(nbytes, 1))))


# ---------------------------------------------------------------- what every MPI rank runs
def _quiet_barrier(comm, busy):
    """A barrier where the ranks that are not measuring sleep instead of spinning:
    on a machine with fewer cores than ranks, MPI's busy polling would steal the cores
    the two ping-pong ranks need."""
    req = comm.mpi_comm.Ibarrier()
    if busy:
        req.Wait()
        return
    while not req.Test():
        time.sleep(1e-3)


def _measure(comm, sizes, algos, quick):
    """``(keys, times)``: this rank's seconds per repeat of every (size, algorithm), each
    checked once against the exact sum first (what every engine's part runs)."""
    from ..collectives import ALGORITHMS

    comm.check = False  # no cross-rank argument check: native and mlscale alike
    p, r = comm.world_size, comm.rank
    want = p * (p + 1) // 2
    keys, times = [], []
    for nbytes in sizes:
        x = np.full(nbytes // 4, r + 1, np.float32)
        out = np.empty_like(x)
        calls = {}
        for a in algos:
            fn = comm._native("all_reduce") if a == "native" else ALGORITHMS["all_reduce"][a]
            takes_out = getattr(fn, "accepts_out", False)  # else the result is a new array
            calls[a] = (lambda a=a, x=x, o=(out if takes_out else None): comm.all_reduce(x, algorithm=a, out=o))
            y = calls[a]()  # warm-up, and a check that it sums right
            if not np.all(y == want):
                raise RuntimeError(f"all_reduce {a} on {fmt_bytes(nbytes)} gave a wrong sum")
        reps = _repeats(nbytes, quick)
        per = time_round_robin(comm, calls, algos, reps)
        for a in algos:
            keys.append((nbytes, a))
            times.append(per[a])
        del x, out
    return keys, times


def _mpi_part(comm, sizes, algos, quick, pp_sizes):
    from mpi4py import MPI

    p, r = comm.world_size, comm.rank
    keys, times = _measure(comm, sizes, algos, quick)
    # a repeat lasts until its slowest rank is done
    measured = slowest_over_ranks(comm, keys, times)

    # ping-pong through mlscale's send/recv: ranks 0 and 1 while the others sleep ("idle"),
    # then every rank at once in pairs (r, r^1), the contention a collective meets ("busy")
    pingpong = {"idle": {}, "busy": {}}
    for mode in ("idle", "busy"):
        peer = r ^ 1
        active = (r < 2) if mode == "idle" else peer < p
        _quiet_barrier(comm, active)
        if active:
            for nbytes in pp_sizes:
                buf = np.zeros(nbytes, np.uint8)
                into = np.empty_like(buf)
                rounds = 5 if quick else int(min(200, max(5, 2e8 // max(nbytes, 1))))
                rtts = []
                for i in range(rounds + 1):
                    t0 = time.perf_counter()
                    if r < peer:
                        comm.send(buf, peer)
                        comm.recv(peer, out=into)
                    else:
                        comm.recv(peer, out=into)
                        comm.send(buf, peer)
                    if i:  # the first round trip warms up
                        rtts.append(time.perf_counter() - t0)
                pingpong[mode][nbytes] = float(np.median(rtts)) / 2
        _quiet_barrier(comm, active)
    gamma = None
    if r == 0:  # seconds per byte reduced: np.add over 16 MiB, others sleeping
        a, b = np.ones(4 << 20, np.float32), np.ones(4 << 20, np.float32)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            np.add(a, b, out=a)
            best = min(best, time.perf_counter() - t0)
        gamma = best / a.nbytes
    _quiet_barrier(comm, r == 0)
    if r != 0:
        return None
    return {"p": p, "measured": measured, "pingpong": pingpong, "gamma": gamma,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(), "mpi4py": _mpi4py_version()}


def _mpi4py_version():
    import mpi4py

    return mpi4py.__version__


def _torch_part(comm, sizes, algos, quick):
    """On the torch engine (TorchComm over gloo): gloo's own all_reduce ("native") and
    mlscale's algorithms written on TorchComm's send/recv, timed as on MPI; a repeat's time
    is the slowest rank's (one all_reduce max through gloo)."""
    import torch

    keys, times = _measure(comm, sizes, algos, quick)
    flat = np.concatenate([np.asarray(t, dtype=float) for t in times])
    slowest = comm.all_reduce(flat, op="max")
    measured, i = {}, 0
    for k, t in zip(keys, times):
        measured[k] = slowest[i:i + len(t)].tolist()
        i += len(t)
    return {"p": comm.world_size, "measured": measured, "torch": torch.__version__} if comm.rank == 0 else None


TORCH_ALGOS = ("native", "ring")


def _torch_tables(rep, mpi_res, torch_res, sizes):
    """gloo's all_reduce beside MPI's and mlscale's ring on both engines, busbw from the
    median time, and the ratios (same sizes, one run of this command)."""
    p = torch_res["p"]
    tm = {k: float(np.median(v)) for k, v in torch_res["measured"].items()}
    mm = {k: float(np.median(v)) for k, v in mpi_res["measured"].items()} if mpi_res else {}
    rows = []
    for nb in sizes:
        bw = {name: busbw("all_reduce", p, nb, t) for name, t in (
            ("gloo", tm[(nb, "native")]), ("ring_torch", tm[(nb, "ring")]),
            ("mpi", mm.get((nb, "native"))), ("ring_mpi", mm.get((nb, "ring")))) if t}
        ratio = (lambda a, b: f"{bw[a] / bw[b]:.2f}x" if a in bw and b in bw else "-")
        rows.append([fmt_bytes(nb), fmt_time(tm[(nb, "native")]), fmt_bw(bw["gloo"]),
                     fmt_bw(bw["mpi"]) if "mpi" in bw else "-", fmt_bw(bw["ring_mpi"]) if "ring_mpi" in bw else "-",
                     fmt_bw(bw["ring_torch"]), ratio("mpi", "gloo"), ratio("ring_mpi", "gloo"),
                     ratio("ring_torch", "gloo")])
    rep.table(["size", "gloo median", "gloo busbw", "MPI Allreduce busbw", "mlscale ring on MPI busbw",
               "mlscale ring on torch busbw", "MPI / gloo", "ring on MPI / gloo", "ring on torch / gloo"], rows,
              align="lrrrrrrrr",
              title=f"torch.distributed (gloo, torch {torch_res['torch']}) all_reduce beside MPI's, {p} ranks, "
                    "float32 (busbw GB/s from the median time; ratios of busbw: > 1 is faster than gloo)")


# ---------------------------------------------------------------- fitting and tables
def fit_alpha_beta(nbytes, seconds):
    """t = alpha + n beta, least squares on relative error (each row divided by t),
    so 8-byte and 16-MiB messages weigh alike. Returns (alpha, beta)."""
    n = np.asarray(nbytes, float)
    t = np.asarray(seconds, float)
    A = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    return max(float(alpha), 0.0), max(float(beta), 0.0)


def _mpi_tables(rep, res, sizes, algos):
    from ..collectives import cost

    p, meas = res["p"], res["measured"]
    med = {k: float(np.median(v)) for k, v in meas.items()}
    best = {k: float(np.min(v)) for k, v in meas.items()}
    rows = []
    for nb in sizes:
        nat = busbw("all_reduce", p, nb, med[(nb, "native")])
        for a in algos:
            bb = busbw("all_reduce", p, nb, med[(nb, a)])
            rows.append([fmt_bytes(nb), a, fmt_time(best[(nb, a)]), fmt_time(med[(nb, a)]),
                         fmt_bw(algbw(nb, med[(nb, a)])), fmt_bw(bb), f"{bb / nat:.2f}"])
    rep.table(["size", "algorithm", "best", "median", "algbw GB/s", "busbw GB/s", "busbw / native"], rows,
              align="lrrrrrr", title=f"All-reduce on {p} MPI ranks, float32 (bandwidths from the median time)")

    rows, verdicts = [], []
    for nb in [s for s in sizes if s >= 16 << 20]:
        rm = med[(nb, "native")] / med[(nb, "ring")]
        rb = best[(nb, "native")] / best[(nb, "ring")]
        verdicts.append(rm >= TARGET_RATIO)
        rows.append([fmt_bytes(nb), fmt_bw(busbw("all_reduce", p, nb, med[(nb, "native")])),
                     fmt_bw(busbw("all_reduce", p, nb, med[(nb, "ring")])), f"{rm:.2f}x", f"{rb:.2f}x",
                     "yes" if rm >= TARGET_RATIO else "NO"])
    if rows:
        rep.table(["size", "native busbw", "mlscale ring busbw", "ring / native (median)", "(best)",
                   f">= {TARGET_RATIO}x"], rows, title="mlscale ring against MPI's Allreduce (target >= 0.9x)")

    gamma = res["gamma"]
    fits = {}
    for mode, pp in res["pingpong"].items():
        ns = sorted(pp)
        fits[mode] = fit_alpha_beta(ns, [pp[n] for n in ns])
    for mode, what in (("idle", "ranks 0 and 1, the others asleep"), ("busy", "every rank at once, in pairs")):
        alpha, beta = fits[mode]
        rep.add(f"Ping-pong fit, {mode} ({what}; mlscale send/recv): alpha = {alpha * 1e6:.2f} us, "
                f"beta = {beta * 1e9:.3f} ns/byte ({1 / beta / 1e9 if beta else float('inf'):.2f} GB/s).  ")
    rep.add(f"gamma (np.add over 16 MiB, one rank) = {gamma * 1e9:.3f} ns/byte.\n")
    idle, busy = res["pingpong"]["idle"], res["pingpong"]["busy"]
    rows = []
    for n in sorted(idle):
        a_i, b_i = fits["idle"]
        a_b, b_b = fits["busy"]
        rows.append([fmt_bytes(n), fmt_time(idle[n]), fmt_time(a_i + n * b_i), fmt_time(busy.get(n)),
                     fmt_time(a_b + n * b_b)])
    rep.table(["bytes", "idle: one-way", "idle: alpha + n beta", "busy: one-way", "busy: alpha + n beta"],
              rows, title="Ping-pong (median one-way time) and the fitted lines")
    alpha, beta = fits["busy"]  # collectives run with every rank busy

    mine = [a for a in algos if a != "native"]
    rows = []
    for nb in sizes:
        row = [fmt_bytes(nb)]
        for a in mine:
            pred = cost.all_reduce(a, p, nb, alpha, beta, gamma)
            row.append(f"{fmt_time(med[(nb, a)])} / {fmt_time(pred)} ({med[(nb, a)] / pred:.1f}x)")
        rows.append(row)
    rep.table(["size"] + mine, rows,
              title="Measured (median) / predicted by mlscale.collectives.cost from the busy fit and gamma "
                    "(measured/predicted)")
    return all(verdicts) if verdicts else None


# ---------------------------------------------------------------- the simulator
def _sim_pingpong(comm, rounds):
    x = np.zeros(1, np.float32)
    t0 = time.perf_counter()
    for _ in range(rounds):
        if comm.rank == 0:
            comm.send(x, 1)
            comm.recv(1)
        else:
            comm.recv(0)
            comm.send(x, 0)
    return time.perf_counter() - t0


def _sim_ring(comm, inputs, outs=None):
    out = None if outs is None else outs[comm.rank]
    return comm.all_reduce(inputs[comm.rank], algorithm="ring", out=out)


def _sim_part(rep, quick, ranks, mib):
    from ..comm.launch import launch

    rounds = 2000 if quick else 20000
    rows = []
    per_msg = {}
    for trace in (True, False):
        best = min(max(launch(_sim_pingpong, 2, args=(rounds,), trace=trace)) for _ in range(3))
        per_msg[trace] = best / (2 * rounds) * 1e6
        rows.append([f"ping-pong, 1 float32, trace={'on' if trace else 'off'}", f"{per_msg[trace]:.1f} us",
                     f"< {TARGET_SIM_US:.0f} us", "yes" if per_msg[trace] < TARGET_SIM_US else "NO"])

    n = (mib << 20) // 4
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(n).astype(np.float32) for _ in range(ranks)]
    outs = [np.zeros(n, np.float32) for _ in range(ranks)]  # touched: no page faults in the timing

    def numpy_sum():
        acc = inputs[0].copy()
        for x in inputs[1:]:
            np.add(acc, x, out=acc)
        return acc

    t_np, t_new, t_out, ok = float("inf"), float("inf"), float("inf"), True
    for _ in range(1 if quick else 3):  # alternate the three, best of each
        t0 = time.perf_counter()
        ref = numpy_sum()
        t_np = min(t_np, time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = launch(_sim_ring, ranks, args=(inputs,))
        t_new = min(t_new, time.perf_counter() - t0)
        ok = ok and all(np.allclose(y, ref, rtol=1e-4, atol=1e-4) for y in res)
        del res
        t0 = time.perf_counter()
        launch(_sim_ring, ranks, args=(inputs, outs))
        t_out = min(t_out, time.perf_counter() - t0)
        ok = ok and all(np.allclose(y, ref, rtol=1e-4, atol=1e-4) for y in outs)
    verdict = []
    for how, t in (("into out= buffers made beforehand", t_out), ("results in new arrays", t_new)):
        ratio = t / t_np
        verdict.append(ratio <= TARGET_SIM_RATIO)
        rows.append([f"ring all-reduce, {mib} MiB x {ranks} ranks, {how}, vs NumPy sum of the {ranks} inputs",
                     f"{fmt_time(t)} vs {fmt_time(t_np)} = {ratio:.2f}x", f"<= {TARGET_SIM_RATIO:.0f}x",
                     ("yes" if ratio <= TARGET_SIM_RATIO else "NO") + ("" if ok else " (WRONG SUM)")])
    rep.table(["sim engine (wall clock)", "measured", "target", "met"], rows, align="lrrr",
              title="The simulator's own speed (sim engine, one process)")
    return per_msg[True] < TARGET_SIM_US and verdict[0] and ok


# ---------------------------------------------------------------- the command
def _run_torch(rep, ns, sizes):
    """The torch part in its own launch (backend="torch"), or None with a line saying why not."""
    from ..comm.errors import BackendUnavailable
    from ..comm.torch_dist import launch_torch

    t0 = time.perf_counter()
    try:
        res = launch_torch(_torch_part, ns.ranks, (sizes, TORCH_ALGOS, ns.quick), timeout=ns.timeout)[0]
    except BackendUnavailable as e:
        rep.add(f"torch.distributed part skipped: {e}\n")
        return None
    rep.add(f"torch.distributed: gloo, torch {res['torch']}; {ns.ranks} ranks (started by mpiexec, every byte "
            f"through gloo); run took {time.perf_counter() - t0:.0f} s.\n")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mlscale bench allreduce", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--ranks", type=int, default=4, help="MPI ranks (default 4)")
    ap.add_argument("--quick", action="store_true", help="3 sizes, 3 repeats: a smoke test")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    ap.add_argument("--no-mpi", action="store_true", help="skip the MPI part")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulator part")
    ap.add_argument("--no-torch", action="store_true",
                    help="skip the torch.distributed (gloo) part (run by default where torch is installed)")
    ap.add_argument("--sim-ranks", type=int, default=8)
    ap.add_argument("--sim-mib", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the MPI run")
    ns = ap.parse_args(argv)

    rep = Report()
    cmd = "mlscale bench allreduce" + (" " + " ".join(argv) if argv else "")
    rep.add(f"Command: `{cmd}`  \nMachine: {machine()}\n")
    ok = True
    if not ns.no_mpi:
        from ..comm.mpi import launch_mpi

        sizes = QUICK_SIZES if ns.quick else SIZES
        pp_sizes = [8 << (2 * i) for i in range(12)]  # 8 B .. 32 MiB
        if ns.quick:
            pp_sizes = pp_sizes[::3]
        t0 = time.perf_counter()
        res = launch_mpi(_mpi_part, ns.ranks, (sizes, ALGOS, ns.quick, pp_sizes), timeout=ns.timeout)[0]
        rep.add(f"MPI: {res['mpi']}, mpi4py {res['mpi4py']}; {ns.ranks} ranks; run took "
                f"{time.perf_counter() - t0:.0f} s.\n")
        met = _mpi_tables(rep, res, sizes, ALGOS)
        ok = ok and met is not False
    if not ns.no_torch:
        res_torch = _run_torch(rep, ns, QUICK_SIZES if ns.quick else SIZES)
        if res_torch is not None:
            _torch_tables(rep, None if ns.no_mpi else res, res_torch, QUICK_SIZES if ns.quick else SIZES)
    if not ns.no_sim:
        ok = _sim_part(rep, ns.quick, ns.sim_ranks, 8 if ns.quick else ns.sim_mib) and ok
    if ns.out:
        rep.write(ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
