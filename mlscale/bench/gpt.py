"""mlscale bench gpt: the NumPy transformer's forward + backward FLOP rate against
NumPy's own matmul doing the same matmuls (the same shapes, the same count), side by side.

    mlscale bench gpt                     # d_model 256, 4 layers, 8 x 128 tokens, float32
    mlscale bench gpt --quick             # a tiny model: a smoke test
    mlscale bench gpt --d-model 512 --layers 2 --out gpt.md

The FLOPs are ``nn.model_flops(config, tokens)`` (6 N + 12 L h s per token), which is
exactly the matmul FLOPs of one ``loss_and_grad`` of ``nn.GPT`` (tests/test_nn_flops.py
counts them). The reference runs the list :func:`step_matmuls` of (batch, m, k, n)
products of that step on contiguous random float arrays with ``np.matmul`` into
preallocated outputs: the rate the BLAS reaches on those shapes, with none of the
model's other work (softmax, norms, GELU, transposed views, temporaries). The target:
the model within 2x of that rate (ratio >= 0.5). Repeats of the two interleave (a
shared machine's load drifts) and the best of each is kept, after a warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import emit, machine, markdown_table

TARGET_RATIO = 0.5


def step_matmuls(cfg, batch):
    """(count, batch dims, m, k, n) of the matmuls in one forward + backward of nn.GPT."""
    b, t, d, f, v, a = batch, cfg.seq_len, cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_heads
    dh, bt, bh = cfg.head_dim, batch * cfg.seq_len, batch * cfg.num_heads
    out = []
    for k_in, k_out in ((d, 3 * d), (d, d), (d, f), (f, d)):  # qkv, proj, fc1, fc2
        out += [(cfg.num_layers, 1, bt, k_in, k_out),   # forward x W
                (cfg.num_layers, 1, k_in, bt, k_out),   # dW = x^T dy
                (cfg.num_layers, 1, bt, k_out, k_in)]   # dx = dy W^T
    out += [(cfg.num_layers, bh, t, dh, t),              # S = Q K^T (forward)
            (cfg.num_layers, bh, t, t, dh),              # Y = P V
            (cfg.num_layers, bh, t, t, dh),              # dV = P^T dY
            (cfg.num_layers, bh, t, dh, t),              # dP = dY V^T
            (cfg.num_layers, bh, t, t, dh),              # dQ = dS K
            (cfg.num_layers, bh, t, t, dh)]              # dK = dS^T Q
    out += [(1, 1, bt, d, v), (1, 1, d, bt, v), (1, 1, bt, v, d)]  # LM head forward, dW, dx
    del b, a
    return out


def matmul_flops(shapes):
    return sum(2 * c * nb * m * k * n for c, nb, m, k, n in shapes)


def measure(cfg, batch, repeats=5, dtype=np.float32, seed=0):
    """Best seconds of one GPT step and of its matmuls alone; returns a dict of the figures."""
    from .. import nn

    model = nn.GPT(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len))
    tgt = rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len))
    flops = nn.model_flops(cfg, batch * cfg.seq_len)
    shapes = step_matmuls(cfg, batch)
    if matmul_flops(shapes) != flops:
        raise AssertionError("step_matmuls does not add up to model_flops: the shape list is out of date")
    ops = []
    for c, nb, m, k, n in shapes:
        lhs = rng.standard_normal((nb, m, k)).astype(dtype)
        rhs = rng.standard_normal((nb, k, n)).astype(dtype)
        res = np.empty((nb, m, n), dtype=dtype)
        ops += [(lhs, rhs, res)] * c

    def reference():
        for lhs, rhs, res in ops:
            np.matmul(lhs, rhs, out=res)

    def step():
        model.loss_and_grad(idx, tgt)

    step(), reference()  # warm-up
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for j, fn in enumerate((step, reference)):
            t0 = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t0)
    return {"flops": flops, "model_s": best[0], "matmul_s": best[1], "model_flops_per_s": flops / best[0],
            "matmul_flops_per_s": flops / best[1], "ratio": best[1] / best[0]}


def main(argv: list[str] | None = None) -> int:
    from ..nn import GPTConfig

    ap = argparse.ArgumentParser(prog="mlscale bench gpt", description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--float64", action="store_true", help="float64 instead of float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 repeats: a smoke test")
    ap.add_argument("--out", help="also write the markdown to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.d_model, args.heads, args.layers, args.seq_len, args.batch, args.vocab, args.repeats = 32, 2, 1, 16, 2, 32, 2
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, d_model=args.d_model, num_heads=args.heads,
                    num_layers=args.layers)
    dtype = np.float64 if args.float64 else np.float32
    r = measure(cfg, args.batch, args.repeats, dtype)
    rows = [["nn.GPT loss_and_grad", f"{r['model_s'] * 1e3:.1f}", f"{r['model_flops_per_s'] / 1e9:.2f}", f"{r['ratio']:.2f}x"],
            ["np.matmul, same shapes", f"{r['matmul_s'] * 1e3:.1f}", f"{r['matmul_flops_per_s'] / 1e9:.2f}", "1.00x"]]
    verdict = "met" if r["ratio"] >= TARGET_RATIO else "NOT met"
    text = (f"GPT d_model={cfg.d_model}, heads={cfg.num_heads}, layers={cfg.num_layers}, seq_len={cfg.seq_len}, "
            f"batch={args.batch}, vocab={cfg.vocab_size}, {np.dtype(dtype).name}: {r['flops'] / 1e9:.3f} GFLOP "
            f"per step (model_flops)\n\n"
            + markdown_table(["", "best ms", "GFLOP/s", "rate vs matmul"], rows)
            + f"\n\nTarget: the model within 2x of matmul's rate (>= {TARGET_RATIO:.2f}x): {verdict}.\n"
            f"Machine: {machine()}\n")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
