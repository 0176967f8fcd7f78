"""mlscale bench kernels: every op of mlscale.ops, NumPy reference vs numba (and, with a
GPU, CuPy vs numba-CUDA), as GB/s and as a fraction of a memory bandwidth measured in
the same run.

    mlscale bench kernels                 # 16M float32 elements
    mlscale bench kernels --quick         # tiny sizes, a smoke test
    mlscale bench kernels --n 4000000 --out kernels.md

The CPU bound is an add counted as 3 arrays of traffic (the STREAM "add"):
``np.add(a, b, out=c)`` as asked, and, since NumPy runs it on one thread and the fresh
output costs a write-allocate read, also ``a = a + b`` in NumPy and in numba on all
threads; each row is judged against the best in-place add timed again within that row
(interleaved with the row's own runs: a shared machine's load drifts). Each op's traffic
counts every array it must read or write once (fused Adam: 7 arrays, 28 bytes per fp32
parameter). The GPU bound is a device-to-device copy (2 arrays). Best of several
repeats, after a warm-up call (numba compiles on first use).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from . import emit

FUSED_ADAM_TARGET_SPEEDUP = 4.0
FUSED_ADAM_TARGET_BOUND = 0.70


def _best(fn, repeats, sync=None):
    return _best_many([fn], repeats, sync)[0]


def _best_many(fns, repeats, sync=None):
    """Best time of each fn, their repeats interleaved so that they share the machine's
    quiet and busy moments alike (a shared 2-core box is noisy)."""
    for fn in fns:                        # warm-up: compiles, faults the pages in
        fn()
    if sync:
        sync()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def _numba_add():
    from numba import njit, prange

    @njit(parallel=True, fastmath=False)
    def add(a, b, c):
        for i in prange(a.size):
            c[i] = a[i] + b[i]
    return add


def _cases(xp, n, rng):
    """(name, bytes per element, elements, {impl-independent setup} -> fn(impl)) per op."""
    import mlscale.ops as ops

    f32 = np.float32

    def arr(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(f32))

    k_ws, k_rb = 4, 8
    ncol = max(1, n // k_rb)
    topk = max(1, n // 100)
    p, g, m, v, buf = arr(n), arr(n), xp.zeros(n, f32), xp.zeros(n, f32), xp.zeros(n, f32)
    x, r = arr(n), xp.zeros(n, f32)
    xs = arr(k_ws, n)
    clients = arr(k_rb, ncol)
    q = ops.qsgd_quantize(x, 7, seed=0, impl="reference" if xp is np else "cupy")[1]
    packed, scale = ops.sign_compress(x, xp.zeros(n, f32), impl="reference" if xp is np else "cupy")
    ti, tv = ops.topk_compress(x, topk, xp.zeros(n, f32), impl="reference" if xp is np else "cupy")
    ws_out, dec_out, rb_out = xp.empty(n, f32), xp.empty(n, f32), xp.empty(ncol, f32)
    # outputs are preallocated (out=): the rows time kernels, not first-touch page faults
    return [
        ("reduce_chunk", 12, n, lambda impl: ops.reduce_chunk(p, g, 0.5, impl=impl)),
        (f"weighted_sum (k={k_ws})", 4 * (k_ws + 1), n,
         lambda impl: ops.weighted_sum(xs, [0.25] * k_ws, out=ws_out, impl=impl)),
        ("sgd_step (momentum)", 20, n,
         lambda impl: ops.sgd_step(p, g, buf, 1e-3, momentum=0.9, impl=impl)),
        ("adam_step", 28, n, lambda impl: ops.adam_step(p, g, m, v, 10, 1e-3, impl=impl)),
        ("norm", 4, n, lambda impl: ops.norm(x, impl=impl)),
        ("qsgd_quantize (s=7)", 9, n, lambda impl: ops.qsgd_quantize(x, 7, seed=1, impl=impl)),
        ("qsgd_dequantize", 5, n,
         lambda impl: ops.qsgd_dequantize(1.0, q, 7, out=dec_out, impl=impl)),
        ("sign_compress", 20.125, n, lambda impl: ops.sign_compress(x, r, impl=impl)),
        ("sign_decompress", 4.125, n,
         lambda impl: ops.sign_decompress(packed, scale, n, out=dec_out, impl=impl)),
        ("topk_compress (k=n/100)", 16, n, lambda impl: ops.topk_compress(x, topk, r, impl=impl)),
        ("topk_decompress", 4 + 8 * topk / n, n,
         lambda impl: ops.topk_decompress(ti, tv, n, out=dec_out, impl=impl)),
        (f"coordinate_median (k={k_rb})", 4 * (k_rb + 1) / k_rb, n,
         lambda impl: ops.coordinate_median(clients, out=rb_out, impl=impl)),
        (f"trimmed_mean (k={k_rb}, b=2)", 4 * (k_rb + 1) / k_rb, n,
         lambda impl: ops.trimmed_mean(clients, 2, out=rb_out, impl=impl)),
    ]


def cpu_table(n, repeats, rng):
    a, b, c = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    add = _numba_add()
    # c = a + b (the spec's np.add), and a = a + b (in place: no write-allocate read of c),
    # each in NumPy (one thread) and in numba (all threads); all count 3 arrays
    ts = _best_many([lambda: np.add(a, b, out=c), lambda: np.add(a, b, out=a),
                     lambda: add(a, b, c), lambda: add(a, b, a)], 2 * repeats)
    bws = [3 * 4 * n / t / 1e9 for t in ts]
    # the machine may be shared: every row times the two in-place adds again, interleaved
    # with its own runs, and is judged against the bound of its own time window
    adds = [lambda: np.add(a, b, out=a), lambda: add(a, b, a)]
    rows, adam = [], None
    for name, bpe, elems, fn in _cases(np, n, rng):
        t_ref, t_nb, *t_add = _best_many([lambda: fn("reference"), lambda: fn("numba")] + adds,
                                         repeats)
        bound = 3 * 4 * n / min(t_add) / 1e9
        gbs_ref, gbs_nb = bpe * elems / t_ref / 1e9, bpe * elems / t_nb / 1e9
        rows.append((name, bpe, gbs_ref, gbs_nb, bound, gbs_nb / bound, t_ref / t_nb))
        if name == "adam_step":
            adam = (t_ref / t_nb, gbs_nb / bound)
    return bws, rows, adam


def _fmt_cpu(n, repeats, bws, rows, adam):
    import numba

    lines = [f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"numba {numba.__version__} ({numba.get_num_threads()} threads), numpy "
             f"{np.__version__}; n = {n:,} float32, best of {repeats}.", "",
             "Memory-bandwidth bound: an add counted as 3 arrays (12 B per element). "
             f"np.add(a, b, out=c) {bws[0]:.1f} GB/s, np.add(a, b, out=a) {bws[1]:.1f} GB/s "
             f"(NumPy: one thread); numba, all threads: c = a + b {bws[2]:.1f} GB/s, "
             f"a = a + b {bws[3]:.1f} GB/s. Each row's bound is the best in-place add (NumPy "
             "or numba) timed again within that row, interleaved with its runs.", "",
             "| op | bytes/elem | NumPy reference GB/s | numba GB/s | bound GB/s | numba % of bound "
             "| numba speedup |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, bpe, ref, nb, bound, frac, sp in rows:
        lines.append(f"| {name} | {bpe:.3g} | {ref:.3g} | {nb:.3g} | {bound:.3g} | "
                     f"{100 * frac:.0f}% | {sp:.2g}x |")
    sp, frac = adam
    lines += ["", "Bytes/elem counts each array an op must read or write once (a fresh output "
              "also costs a hidden write-allocate read, not counted). Best of the repeats."]
    ok_sp, ok_bw = sp >= FUSED_ADAM_TARGET_SPEEDUP, frac >= FUSED_ADAM_TARGET_BOUND
    lines += ["", f"Fused Adam (numba) vs NumPy reference: **{sp:.1f}x** (target >= "
              f"{FUSED_ADAM_TARGET_SPEEDUP:g}x: {'met' if ok_sp else 'MISSED'}), at "
              f"**{100 * frac:.0f}%** of the bound (target >= {100 * FUSED_ADAM_TARGET_BOUND:.0f}%: "
              f"{'met' if ok_bw else 'MISSED'})."]
    return lines


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def gpu_lines(n, repeats, rng):
    """The same table on the GPU: CuPy kernels (``kernels/*.cu``) and numba-CUDA."""
    import cupy as cp

    import mlscale.ops as ops

    sync = cp.cuda.Device().synchronize
    a = cp.asarray(rng.standard_normal(n).astype(np.float32))
    b = cp.empty_like(a)
    t = _best(lambda: cp.copyto(b, a), repeats, sync)
    peak = 2 * 4 * n / t / 1e9
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    lines = [f"GPU: {name}; device-to-device copy (2 arrays): **{peak:.0f} GB/s**", "",
             "| op | bytes/elem | CuPy GB/s | CuPy % of copy | numba-CUDA GB/s | numba-CUDA % of copy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name_, bpe, elems, fn in _cases(cp, n, rng):
        cells = []
        for impl in ("cupy", "cuda"):
            try:
                tt = _best(lambda: fn(impl), repeats, sync)
                g = bpe * elems / tt / 1e9
                cells += [f"{g:.0f}", f"{100 * g / peak:.0f}%"]
            except Exception as e:                 # report, do not hide: the row says why
                cells += [f"error: {type(e).__name__}", ""]
        lines.append(f"| {name_} | {bpe:g} | " + " | ".join(cells) + " |")
    lines += ["", "Reduction ladder (4 bytes/element):", "",
              "| version | CuPy (reduce.cu) GB/s | numba-CUDA GB/s |", "|---|---:|---:|"]
    for v in range(7):
        cells = []
        for fn in (lambda: ops.sum_cupy(a, v), lambda: getattr(ops, f"sum_v{v}")(a)):
            try:
                cells.append(f"{4 * n / _best(fn, repeats, sync) / 1e9:.0f}")
            except Exception as e:
                cells.append(f"error: {type(e).__name__}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mlscale bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16 * 2**20, help="elements per array (default 16M)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats: a smoke test")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats; the best is kept")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU table")
    args = ap.parse_args(argv)
    n, repeats = (4096, 2) if args.quick else (args.n, args.repeats)
    rng = np.random.default_rng(0)
    lines = ["### CPU", ""] + _fmt_cpu(n, repeats, *cpu_table(n, repeats, rng))
    if not args.no_gpu and _gpu_available():
        lines += ["", "### GPU", ""] + gpu_lines(n, repeats, rng)
    else:
        lines += ["", "### GPU", "", "No GPU with cupy here: GPU table not measured."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
