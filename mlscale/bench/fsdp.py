"""mlscale bench fsdp: ZeRO stages 0-3 of the GPT on simulated ranks, side by side:
measured peak memory per rank (the FSDP ledger), bytes on the wire per step (trace),
and the virtual step time of ZeRO-3 with and without prefetch on modelled networks.

    mlscale bench fsdp                    # GPT d_model 64, 6 layers, 4 ranks, float64
    mlscale bench fsdp --ranks 8 --layers 12 --out fsdp.md

Times are virtual (the simulator's clock: compute charged at --flops FLOP/s per rank,
messages at alpha + nbytes beta), so they are the same on every machine and every run.
"""
from __future__ import annotations

import argparse

import numpy as np

from . import emit, fmt_bytes, markdown_table

NETWORKS = {"NVLink-like (1 us, 100 GB/s)": (1e-6, 1e-11), "Ethernet-like (10 us, 1 GB/s)": (1e-5, 1e-9)}


def main(argv=None) -> int:
    from ..comm import NetworkModel
    from ..nn import GPT, GPTConfig
    from ..parallel.fsdp_report import prefetch_step_times, zero_stages

    ap = argparse.ArgumentParser(prog="mlscale bench fsdp", description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences), divisible by --ranks")
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--flops", type=float, default=1e10, help="modelled FLOP/s per rank")
    ap.add_argument("--out", help="also write the markdown to this file")
    args = ap.parse_args(argv)
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, d_model=args.d_model, num_heads=args.heads,
                    num_layers=args.layers)

    def make_model():
        return GPT(cfg, seed=0, dtype=np.float64)

    rng = np.random.default_rng(0)
    batch = (rng.integers(0, cfg.vocab_size, (args.batch, cfg.seq_len)),
             rng.integers(0, cfg.vocab_size, (args.batch, cfg.seq_len)))
    p = args.ranks
    rows = []
    for r in zero_stages(make_model, batch, p):
        rows.append([f"ZeRO-{r['stage']}"] + [fmt_bytes(r[k]) for k in ("params", "grads", "optimizer", "peak_total",
                                                                          "paper", "wire")]
                    + [f"{r['wire_vs_dp']:.2f}x"])
    n = make_model().num_params
    text = (f"GPT d_model={cfg.d_model}, layers={cfg.num_layers}, seq_len={cfg.seq_len}, vocab={cfg.vocab_size}: "
            f"{n} parameters, float64, Adam; {p} simulated ranks, global batch {args.batch}, one unit per layer\n\n"
            + markdown_table(["stage", "params peak", "grads peak", "Adam state", "peak total (rank 0)",
                              "ZeRO model (zero_memory)", "wire per step", "vs DP"], rows)
            + "\n\nZeRO-3 step time (virtual), prefetch of the next unit's all-gather on the communication stream:\n\n")
    trows = []
    for name, (alpha, beta) in NETWORKS.items():
        t = prefetch_step_times(make_model, batch, p, NetworkModel(alpha=alpha, beta=beta, flops=args.flops))
        trows.append([name, f"{t['no prefetch'] * 1e3:.3f}", f"{t['prefetch'] * 1e3:.3f}",
                      f"{t['no prefetch'] / t['prefetch']:.2f}x"])
    text += markdown_table(["network", "no prefetch (ms)", "prefetch (ms)", "speed-up"], trows) + "\n"
    emit(text, args.out)
    return 0
