"""Benchmarks behind ``mlscale bench NAME``: ``allreduce``, ``kernels``, ``train``.

Helpers they share: nccl-tests' bandwidth definitions, markdown tables, units, and a
one-line description of the machine. Every benchmark measures what it compares side by
side in one run and reports ratios where a claim is made.

Bandwidths (nccl-tests, doc/PERFORMANCE.md): ``algbw = S / t``; ``busbw = algbw *
factor``, factor 2(p-1)/p for all_reduce, (p-1)/p for reduce_scatter and all_gather, 1
for broadcast and reduce. A perfect ring on links of bandwidth B reaches busbw = B, so
busbw compares algorithms and world sizes on one scale.
"""
from __future__ import annotations

import os
import platform
import sys

from ..collectives.cost import BUSBW_FACTOR, algbw, busbw  # noqa: F401  (nccl-tests' definitions)


def emit(text, path=None):
    """Print a benchmark's report, and write it to ``path`` too when given (--out)."""
    sys.stdout.write(text)
    if path:
        with open(path, "w") as f:
            f.write(text)


def fmt_bytes(n):
    """4096 -> '4 KiB', 67108864 -> '64 MiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def fmt_time(s):
    """Seconds in the unit that reads best: '12.3 us', '4.56 ms', '1.23 s'."""
    if s is None or s != s:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bw(bytes_per_s):
    """Bytes per second as GB/s (10^9, as nccl-tests prints)."""
    return f"{bytes_per_s / 1e9:.2f}"


def markdown_table(headers, rows, align=None):
    """A GitHub markdown table. ``align``: a string of 'l'/'r' per column (default:
    first column left, the rest right)."""
    headers = [str(h) for h in headers]
    rows = [[str(c) for c in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        out = []
        for c, w, a in zip(cells, widths, align):
            out.append(c.ljust(w) if a == "l" else c.rjust(w))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def machine():
    """One line: cores, CPU, OS, Python, NumPy."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count()
    gpu = "no GPU"
    if os.path.exists("/dev/nvidia0"):
        gpu = "NVIDIA GPU present"
    return (f"{cores} CPU cores ({cpu}), {gpu}, {platform.system()} {platform.release()}, "
            f"Python {sys.version.split()[0]}, NumPy {np.__version__}")


class Report:
    """Collects markdown sections, prints each as it comes, writes them all to a file."""

    def __init__(self, title=None):
        self.parts = [f"### {title}\n"] if title else []

    def add(self, text=""):
        print(text, flush=True)
        self.parts.append(text)

    def table(self, headers, rows, align=None, title=None):
        if title:
            self.add(f"**{title}**\n")
        self.add(markdown_table(headers, rows, align) + "\n")

    def write(self, path):
        with open(path, "w") as f:
            f.write("\n".join(self.parts).rstrip() + "\n")


def time_round_robin(comm, calls, names, repeats):
    """``{name: [seconds, ...]}``: each of ``calls[name]()`` timed ``repeats`` times, the names
    taken in turn (round-robin, so a drift in the machine's load hits them alike), a barrier
    before each call so every rank starts it together."""
    import time

    per = {a: [] for a in names}
    for _ in range(repeats):
        for a in names:
            comm.barrier()
            t0 = time.perf_counter()
            calls[a]()
            per[a].append(time.perf_counter() - t0)
    return per


def slowest_over_ranks(comm, keys, times):
    """``{key: [seconds, ...]}`` with each time replaced by the slowest rank's (a collective
    lasts until its last rank is done): one MPI ``Allreduce(MAX)`` over all of them."""
    import numpy as np
    from mpi4py import MPI

    flat = np.concatenate([np.asarray(t, dtype=float) for t in times])
    slowest = np.empty_like(flat)
    comm.mpi_comm.Allreduce(flat, slowest, op=MPI.MAX)
    measured, i = {}, 0
    for k, t in zip(keys, times):
        measured[k] = slowest[i : i + len(t)].tolist()
        i += len(t)
    return measured
