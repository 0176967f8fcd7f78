"""mlscale bench train --model gpt: the GPT trained with DP, TP, PP and 3D parallelism
(``mlscale.parallel.train_3d``), tokens per second and the share of time in communication.

    mlscale bench train --model gpt              # sim (two modelled networks) and mpi
    mlscale bench train --model gpt --quick      # a smoke test: fewer steps, sim only
    mlscale bench train --model gpt --out gpt.md

1. sim: virtual time. Compute is charged at ``--tflops`` per rank (the pipeline charges
   each micro-batch's matmul FLOPs), messages at alpha + nbytes * beta of a modelled
   network: "nvlink" (2 us, 200 GB/s) and "ethernet" (10 us, 12.5 GB/s). tokens/s =
   tokens trained / virtual seconds of the slowest rank; "not computing" = 1 - (declared
   compute seconds / virtual seconds), averaged over the ranks: time in communication
   and waiting for it, the pipeline bubble included; MFU from
   ``nn.model_flops`` and the declared peak. Deterministic: the same numbers on any machine.
2. mpi: wall-clock tokens/s of the same program on real processes (layouts of at most
   ``--max-mpi`` ranks; the machine's cores are shared, so this measures the Python and
   NumPy overhead of the implementation, not a cluster). Communication share not measured.

FSDP / ZeRO-3 is not in this table: it is not in the library yet (branch i10-mesh-zero).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from . import emit, markdown_table

LAYOUTS = {"1 device": (1, 1, 1), "DP": (2, 1, 1), "TP": (1, 1, 2), "PP": (1, 2, 1), "TP+PP": (1, 2, 2),
           "3D": (2, 2, 2)}
NETWORKS = {"nvlink": (2e-6, 1 / 200e9), "ethernet": (1e-5, 1 / 12.5e9)}


def config(args):
    from ..nn import GPTConfig

    return GPTConfig(vocab_size=64, seq_len=args.seq, d_model=args.d_model, num_heads=args.heads,
                     num_layers=args.layers)


def batches(cfg, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.seq_len)
    return [(rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)) for _ in range(steps)]


def sim_row(cfg, data, dims, network, peak, microbatches):
    """(tokens/s, share of time not computing, MFU) on sim, from the virtual clocks."""
    from ..comm import NetworkModel, launch
    from ..parallel import sim_mfu, train_3d

    dp, pp, tp = dims
    alpha, beta = network
    res = launch(train_3d, dp * pp * tp, args=(cfg, data, dp, pp, tp, microbatches, 1e-3, tp > 1, True, 0,
                                               np.float32), network=NetworkModel(alpha=alpha, beta=beta, flops=peak))
    compute = [0.0] * len(res)
    for s in res.trace.spans:
        compute[s.rank] += s.end - s.start
    clocks = [r["clock"] for r in res]
    tokens = sum(x.size for x, _ in data)
    share = float(np.mean([1 - c / t for c, t in zip(compute, clocks)]))
    return tokens / max(clocks), share, sim_mfu(cfg, data, res, peak)


def mpi_row(cfg, data, dims, microbatches):
    """Wall-clock tokens/s on mpi processes (launch overhead excluded: timed inside)."""
    from ..comm import launch

    dp, pp, tp = dims
    res = launch(_timed, dp * pp * tp, args=(cfg, data, dims, microbatches), backend="mpi", timeout=600)
    return sum(x.size for x, _ in data) / max(res)


def _timed(comm, cfg, data, dims, microbatches):
    from ..parallel import train_3d

    comm.barrier()
    t0 = time.perf_counter()
    train_3d(comm, cfg, data, *dims, microbatches, 1e-3, dims[2] > 1, True, 0, np.float32)
    comm.barrier()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mlscale bench train --model gpt", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 steps, sim only")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--tflops", type=float, default=50.0, help="modelled peak per rank on sim, TFLOP/s")
    ap.add_argument("--max-mpi", type=int, default=4, help="largest layout run on mpi (ranks)")
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.model != "gpt":
        raise SystemExit(f"mlscale bench train --model {args.model!r}: only 'gpt' here")
    from ..nn import GPT

    cfg = config(args)
    steps = 2 if args.quick else args.steps
    data = batches(cfg, args.batch, steps)
    peak = args.tflops * 1e12
    t_start = time.perf_counter()
    lines = [f"### GPT, {GPT(cfg).num_params / 1e6:.2f} M parameters (d={cfg.d_model}, L={cfg.num_layers}, "
             f"heads={cfg.num_heads}, seq={cfg.seq_len}), global batch {args.batch}, {steps} Adam steps, "
             f"{args.microbatches} micro-batches, SP on when tp > 1, ZeRO-1 on dp", "",
             f"sim: virtual time, compute at {args.tflops:g} TFLOP/s per rank; nvlink = (2 us, 200 GB/s), "
             f"ethernet = (10 us, 12.5 GB/s) per message", ""]
    rows = []
    for name, dims in LAYOUTS.items():
        row = [name, str(dims)]
        for net in NETWORKS.values():
            tps, share, m = sim_row(cfg, data, dims, net, peak, args.microbatches)
            row += [f"{tps:,.0f}", f"{100 * share:.0f}%", f"{m:.3f}"]
        rows.append(row)
    hdr = ["layout", "(dp, pp, tp)"] + [f"{n} {k}" for n in NETWORKS for k in ("tokens/s", "not computing", "MFU")]
    lines.append(markdown_table(hdr, rows))
    if not (args.quick or args.no_mpi):
        from ..doctor import doctor

        if doctor(verbose=False, check_mpi=True).engine_for("processes") == "mpi":
            mrows = [[name, str(d), f"{mpi_row(cfg, data, d, args.microbatches):,.0f}"]
                     for name, d in LAYOUTS.items() if int(np.prod(d)) <= args.max_mpi]
            lines += ["", f"mpi: wall clock, {os.cpu_count()} CPU cores shared by all ranks (Python/NumPy "
                      f"overhead, not a cluster)", ""]
            lines.append(markdown_table(["layout", "(dp, pp, tp)", "tokens/s"], mrows))
        else:
            lines += ["", "mpi: not measured (mlscale doctor: no working MPI here)"]
    lines += ["", f"(mlscale bench train --model gpt{' --quick' if args.quick else ''}: "
              f"{time.perf_counter() - t_start:.1f} s)"]
    emit("\n".join(lines) + "\n", args.out)
    return 0
