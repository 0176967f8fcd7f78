"""mlscale bench train: data-parallel training, measured here and predicted at scale.

    mlscale bench train                  # sim and mpi on 1, 2, 4 ranks, 200 steps each
    mlscale bench train --quick          # a smoke test (< 15 s): fewer ranks and steps
    mlscale bench train --out train.md   # also write the markdown to a file
    mlscale bench train --model gpt      # the GPT with DP, TP, PP, 3D (bench/train_gpt.py)

1. Measured: steps per second of data-parallel training of an MLP on the digits
   (``mlscale.data.load_digits``), 64 examples per rank (weak scaling), one 25 MiB
   bucket (PyTorch DDP's default), on ``sim`` and, when ``mlscale doctor`` says MPI
   works, on ``mpi`` processes; with mlscale's ring and with the engine's own
   all-reduce. The share of time spent communicating: on ``mpi`` the wall time inside
   the all-reduce (``time.perf_counter`` around it) over the step time, which includes
   waiting for slower ranks; on ``sim`` from the virtual clock (1 - declared compute /
   step time, under the default ``NetworkModel``).
2. Predicted: weak-scaling efficiency T(1)/T(p) from the alpha-beta cost model
   (``mlscale.collectives.cost``) for a compute-heavy and a parameter-heavy model at
   p = 1..512 GPUs, with and without overlapping the all-reduce with the backward pass:
   the Horovod effect (Sergeev and Del Balso 2018: 90% for Inception V3 / ResNet-101,
   68% for VGG-16 at 512 GPUs).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from ..collectives import cost
from ..train import DataParallel
from . import emit

SIZES = (64, 256, 256, 10)  # the digits MLP: 85k parameters, 338 KiB of float32 gradients
BATCH_PER_RANK = 64
BUCKET = 25 * 2**20
ALGORITHMS = ("ring", None)  # mlscale's ring on send/recv; the engine's own (MPI_Allreduce)


# ---- 1. measured -------------------------------------------------------------------------
class TimedDataParallel(DataParallel):
    """DataParallel that adds up the wall time spent inside its all-reduces."""

    comm_seconds = 0.0

    def _all_reduce(self, comm, g):
        t0 = time.perf_counter()
        super()._all_reduce(comm, g)
        self.comm_seconds += time.perf_counter() - t0


def train_program(comm, steps, warmup, sizes, algorithms, impl):
    """On every rank: for each algorithm, ``warmup`` then ``steps`` timed steps of
    data-parallel SGD. Returns {algorithm: (wall s, comm wall s, virtual s, virtual compute s)}."""
    from ..data import load_digits, split_batch
    from ..nn import MLP, SGD
    from ..train.common import Stepper

    X, y = load_digits()[:2]
    gb = BATCH_PER_RANK * comm.world_size
    idx = np.random.default_rng(0).integers(0, len(X), size=(warmup + steps, gb))
    out = {}
    for algo in algorithms:
        model = MLP(list(sizes), seed=0)
        opt = SGD(model, lr=0.05, momentum=0.9, impl=impl)
        sync = TimedDataParallel(bucket_bytes=BUCKET, algorithm=algo)
        stepper = Stepper(comm, model)
        for i in range(warmup + steps):
            if i == warmup:
                comm.barrier()
                t0, v0, c0 = time.perf_counter(), comm.clock, stepper.compute_time
                sync.comm_seconds = 0.0
            mine = split_batch((X[idx[i]], y[idx[i]]), comm.rank, comm.world_size)
            sync.step(comm, model, opt, stepper, [mine])
        out[algo or "default"] = (time.perf_counter() - t0, sync.comm_seconds,
                                  comm.clock - v0, stepper.compute_time - c0)
    return out


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def _one_thread(engine):
    """One BLAS/OpenMP thread per rank on both engines: the sim engine runs its ranks one
    at a time in this process, and MPI ranks (started with these variables) are as many
    as the cores or more. Spare BLAS threads spin for work and, on a busy 2-core
    machine, make these small matrix products 10-100x slower and the timings noise."""
    if engine != "sim":
        saved = {k: os.environ.get(k) for k in THREAD_VARS}
        os.environ.update({k: "1" for k in THREAD_VARS})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, leave the pools alone
        yield
        return
    with threadpool_limits(limits=1):
        yield


@dataclass
class Row:
    engine: str
    ranks: int
    algorithm: str
    steps_per_s: float
    comm_share: float
    virtual_step: float | None = None  # sim only, seconds

    @property
    def samples_per_s(self):
        return self.steps_per_s * BATCH_PER_RANK * self.ranks


def measure(engine, ranks, steps, warmup, sizes=SIZES, impl="auto", repeats=1):
    """Rows for one engine and world size: the best of ``repeats`` launches (each runs
    every algorithm), as a busy machine only ever makes a run slower."""
    best = {}
    for _ in range(repeats):
        for row in _measure_once(engine, ranks, steps, warmup, sizes, impl):
            if row.algorithm not in best or row.steps_per_s > best[row.algorithm].steps_per_s:
                best[row.algorithm] = row
    return list(best.values())


def _measure_once(engine, ranks, steps, warmup, sizes, impl):
    import mlscale as ms

    with _one_thread(engine):
        res = ms.launch(train_program, ranks, args=(steps, warmup, tuple(sizes), ALGORITHMS, impl),
                        backend=engine)
    rows = []
    for algo in (a or "default" for a in ALGORITHMS):
        per_rank = [r[algo] for r in res]
        wall = max(w for w, _, _, _ in per_rank)
        if engine == "sim":
            vt, vc = res[0][algo][2], res[0][algo][3]
            rows.append(Row(engine, ranks, algo, steps / wall, 1 - vc / vt if vt > 0 else 0.0, vt / steps))
        else:
            share = float(np.mean([c / w for w, c, _, _ in per_rank]))
            rows.append(Row(engine, ranks, algo, steps / wall, share))
    return rows


def measured_lines(rows, steps, sizes, repeats=1):
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    lines = [f"MLP {list(sizes)} ({n:,} parameters, {4 * n / 2**10:.0f} KiB of float32 gradients) on "
             f"the digits, {BATCH_PER_RANK} examples per rank, SGD with momentum, one all-reduce "
             f"per step; {steps} timed steps after a warm-up, best of {repeats} launches. Virtual "
             "times: the sim engine's default NetworkModel (10 us and 1 GB/s per link, 10 GFLOP/s "
             "per rank). Comm share on mpi: wall time inside the all-reduce, waiting for slower "
             "ranks included, over the step.", "",
             "| engine | ranks | all-reduce | steps/s (wall) | samples/s (wall) | virtual ms/step | comm share |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        algo = {"ring": "mlscale ring", "default": "engine's own"}.get(r.algorithm, r.algorithm)
        if r.engine == "mpi" and r.algorithm == "default":
            algo = "MPI_Allreduce"
        vms = f"{1e3 * r.virtual_step:.3f}" if r.virtual_step is not None else "-"
        how = "virtual" if r.engine == "sim" else "wall"
        lines.append(f"| {r.engine} | {r.ranks} | {algo} | {r.steps_per_s:,.0f} | {r.samples_per_s:,.0f} | "
                     f"{vms} | {100 * r.comm_share:.0f}% ({how}) |")
    return lines


# ---- 2. predicted at scale ----------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A model as the cost model sees it: parameters, and forward FLOPs per sample."""

    name: str
    params: float
    gflop_fwd: float

    @property
    def bytes_per_flop(self):
        return 4 * self.params / (3e9 * self.gflop_fwd)


RESNET50 = Workload("ResNet-50-like", 25.6e6, 4.1)  # compute-heavy
VGG16 = Workload("VGG-16-like", 138e6, 15.5)  # parameter-heavy


@dataclass(frozen=True)
class Cluster:
    """GPUs and network for the prediction. Defaults: P100-class GPUs sustaining 5
    TFLOP/s (about half the fp32 peak of 10.6), 4 per node on a 10 GB/s bus, nodes on
    25 Gb/s Ethernet with RDMA (the Horovod paper's set-up), a flat ring."""

    gbps: float = 25.0  # inter-node link, Gbit/s
    alpha: float = 10e-6  # inter-node latency per message, s
    gpus_per_node: int = 4
    intra_gbps: float = 80.0  # inside a node (PCIe 3 x16), Gbit/s
    intra_alpha: float = 2e-6
    tflops: float = 5.0  # sustained FLOP/s per GPU, in TFLOP/s
    batch: int = 64  # examples per GPU (weak scaling: fixed per GPU)
    bucket_bytes: int = 25 * 2**20  # gradients all-reduced in buckets (DDP, Horovod fusion)
    overlap: bool = False  # start each bucket's all-reduce as soon as backward fills it

    @property
    def label(self):
        return f"{self.gbps:g} Gb/s"


def _buckets(nbytes, bucket):
    """ceil(n / bucket) equal buckets (a model's layers decide the real cut)."""
    k = max(1, math.ceil(nbytes / bucket))
    return [nbytes / k] * k


def step_time(w: Workload, c: Cluster, p: int):
    """(seconds per step, of which compute) for one GPU of p, weak scaling.

    Compute: forward ``batch * gflop_fwd`` FLOPs, backward twice that. Communication:
    a ring all-reduce per bucket, ``cost.all_reduce("ring", ...)``; past one node the
    ring's slowest hop is the network link. Overlap: bucket k's gradients are ready
    once backward has covered its share of the parameters (parameters spread evenly
    over the backward pass); its all-reduce starts then, or when the previous one ends.
    """
    fwd = c.batch * w.gflop_fwd * 1e9 / (c.tflops * 1e12)
    bwd = 2 * fwd
    if p == 1:
        return fwd + bwd, fwd + bwd
    alpha, gbps = (c.intra_alpha, c.intra_gbps) if p <= c.gpus_per_node else (c.alpha, c.gbps)
    beta = 8 / (gbps * 1e9)
    n = 4 * w.params
    sizes = _buckets(n, c.bucket_bytes)
    times = [cost.all_reduce("ring", p, s, alpha, beta) for s in sizes]
    if not c.overlap:
        return fwd + bwd + sum(times), fwd + bwd
    end, done = 0.0, 0
    for s, t in zip(sizes, times):
        done += s
        end = max(end, fwd + bwd * done / n) + t
    return max(fwd + bwd, end), fwd + bwd


def efficiency(w: Workload, c: Cluster, p: int):
    """Weak-scaling efficiency T(1) / T(p): 1 on one GPU, 1 while communication hides."""
    return step_time(w, c, 1)[0] / step_time(w, c, p)[0]


PS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
HOROVOD = {"ResNet-50-like": 0.90, "VGG-16-like": 0.68}  # at 512 GPUs (ResNet-101, VGG-16)


def predicted_lines(clusters, ps=PS, workloads=(RESNET50, VGG16)):
    c0 = clusters[0]
    lines = [f"Assumptions: {c0.tflops:g} TFLOP/s sustained per GPU (P100-class), {c0.batch} examples "
             f"per GPU, backward = 2x forward FLOPs, fp32 gradients in {c0.bucket_bytes // 2**20} MiB "
             f"buckets, a flat ring all-reduce; {c0.gpus_per_node} GPUs per node at {c0.intra_gbps:g} Gb/s, "
             f"alpha {c0.intra_alpha * 1e6:g} us; between nodes Ethernet with alpha "
             f"{c0.alpha * 1e6:g} us. " + "; ".join(
                 f"{w.name}: {w.params / 1e6:g}M parameters, {w.gflop_fwd:g} GFLOP/sample forward, "
                 f"{1e3 * step_time(w, c0, 1)[0]:.0f} ms of compute per step, "
                 f"{1e3 * w.bytes_per_flop:.1f} gradient bytes per kFLOP" for w in workloads) + "."]
    for c in clusters:
        lines += ["", f"{c.label} between nodes:", "",
                  "| p |" + "".join(f" {w.name} | {w.name}, overlap |" for w in workloads),
                  "|---:|" + "---:|" * (2 * len(workloads))]
        for p in ps:
            cells = [f"{100 * efficiency(w, replace(c, overlap=o), p):.0f}%"
                     for w in workloads for o in (False, True)]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    p = max(ps)
    lines += ["", f"At p = {p}, against Horovod's measurements (25 Gb/s RDMA, overlapped, tensor fusion):", ""]
    for c in clusters:
        parts = []
        for w in workloads:
            no, yes = efficiency(w, c, p), efficiency(w, replace(c, overlap=True), p)
            ref = HOROVOD.get(w.name)
            parts.append(f"{w.name} {100 * no:.0f}% without overlap, {100 * yes:.0f}% with"
                         + (f" (Horovod: {100 * ref:.0f}%)" if ref else ""))
        lines.append(f"- {c.label}: " + "; ".join(parts) + ".")
    return lines


# ---- the command -----------------------------------------------------------------------------
def _mpi_works():
    from ..doctor import doctor

    rep = doctor(verbose=False)
    return rep.engine_for("processes") == "mpi", rep.fallback_message("processes")


def main(argv=None):
    argv = list(__import__("sys").argv[1:] if argv is None else argv)
    if "--model" in argv or any(a.startswith("--model=") for a in argv):  # mlscale bench train --model gpt
        from .train_gpt import main as gpt_main

        return gpt_main(argv)
    # numba's OpenMP threads must sleep between kernels: spinning, they fight OpenBLAS's
    # threads for the cores and a 1 ms step takes 10-40 ms on 2 cores. Set before the
    # first parallel kernel runs here; the MPI ranks inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(prog="mlscale bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke test (< 15 s): sim on 1 and 2 ranks, "
                    "mpi on 2, 10 steps")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per run (default 200)")
    ap.add_argument("--ranks", default="1,2,4", help="world sizes to measure (default 1,2,4)")
    ap.add_argument("--repeats", type=int, default=3, help="launches per measurement, the best kept (default 3)")
    ap.add_argument("--no-mpi", action="store_true", help="measure the sim engine only")
    ap.add_argument("--impl", default="auto", help="optimizer kernel: auto (numba) or reference (NumPy)")
    ap.add_argument("--gbps", default="10,25", help="network speeds for the prediction, Gbit/s")
    ap.add_argument("--out", help="also write the markdown to this file")
    args = ap.parse_args(argv)
    ranks = [1, 2] if args.quick else [int(r) for r in args.ranks.split(",")]
    steps, warmup = (10, 2) if args.quick else (args.steps, 10)
    t_start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    engines = ["sim"]
    note = None
    if not args.no_mpi:
        ok, why = _mpi_works()
        if ok:
            engines.append("mpi")
        else:
            note = f"mpi not measured: {why}"
    rows = []
    for engine in engines:
        for p in ([2] if args.quick and engine == "mpi" else ranks):
            rows += measure(engine, p, steps, warmup, impl=args.impl, repeats=1 if args.quick else args.repeats)
    import numba

    lines = ["### Measured: data-parallel training of the digits MLP", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (this part runs on CPUs); Python "
             f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}; "
             f"one BLAS thread per rank; optimizer kernel impl={args.impl}"
             + (f"; load average {load:.1f} at the start (other work on the machine slows the "
                f"wall-clock rows)" if load is not None else "") + ".", ""]
    lines += measured_lines(rows, steps, SIZES, 1 if args.quick else args.repeats)
    if note:
        lines += ["", note]
    clusters = [Cluster(gbps=float(g)) for g in args.gbps.split(",")]
    lines += ["", "### Predicted: weak-scaling efficiency T(1)/T(p) from the cost model", ""]
    lines += predicted_lines(clusters)
    lines += ["", f"(mlscale bench train{' --quick' if args.quick else ''}: "
              f"{time.perf_counter() - t_start:.1f} s)"]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
