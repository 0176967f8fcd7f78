"""How fast can a memory-bound kernel go here? Measured bandwidth, and kernels against it.

Every op in mlscale.ops does a few flops per 4-byte value it loads, far below any
machine's flops/byte balance (an H100 does ~20 fp32 flops per byte of HBM bandwidth), so
its time is at least ``bytes moved / memory bandwidth`` (the roofline model: Williams,
Waterman and Patterson, CACM 2009). A kernel's speed is judged as GB/s (bytes it must
move / time) against a bound measured in the same run:

- CPU: an add counted as 3 arrays (the STREAM "add", 12 B per fp32 element), the best of
  ``a = a + b`` in NumPy (one thread) and in numba (all threads);
- GPU: a device-to-device copy (2 arrays, 8 B per element), next to the datasheet peak
  (:data:`DEVICE_PEAK_GB_S`).

The timing code is ``mlscale bench kernels``'s (mlscale/bench/kernels.py), imported, not
copied: best of several repeats, interleaved so that a shared machine's quiet and busy
moments fall on every function alike, after a warm-up call (numba compiles on first use).

    bw = add_bandwidth(2**22)                      # {'np.add(a, b, out=c)': GB/s, ...}
    t = throughput({"reference": f, "numba": g}, nbytes=28 * n, n_bound=n)
    t.gb_s["numba"], t.fraction("numba"), t.speedup("numba", "reference")
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..bench.kernels import _best_many, _numba_add

# Datasheet memory bandwidth, GB/s (NVIDIA product pages; REFERENCES.md: H100 SXM HBM3
# 3.35 TB/s, T4 320 GB/s). Matched against the device name, most specific first.
DEVICE_PEAK_GB_S = (
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),          # SXM5, HBM3 ("NVIDIA H100 80GB HBM3")
    ("H200", 4800.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100-PCIE-80GB", 1935.0),
    ("A100", 1555.0),          # 40 GB
    ("V100", 900.0),
    ("L4", 300.0),
    ("T4", 320.0),             # Colab's GPU
)


def device_peak_gb_s(name: str) -> float | None:
    """Datasheet memory bandwidth (GB/s) of a GPU named ``name`` (as CUDA reports it,
    e.g. 'Tesla T4', 'NVIDIA H100 80GB HBM3'); None when the name is not in the table."""
    if not isinstance(name, str):
        raise TypeError(f"device_peak_gb_s: name must be a str such as 'Tesla T4', got "
                        f"{type(name).__name__}")
    low = name.lower()
    for key, gb_s in DEVICE_PEAK_GB_S:
        if key.lower() in low:
            return gb_s
    return None


@functools.lru_cache(maxsize=None)
def numba_add():
    """``add(a, b, c)``: c = a + b with numba on all threads (compiled once per process)."""
    return _numba_add()


def _check_n(fn_name, n):
    if int(n) != n or n < 1:
        raise ValueError(f"{fn_name}: n={n!r} must be a positive int (elements per array)")
    return int(n)


def add_bandwidth(n: int = 2**22, repeats: int = 5, seed: int = 0) -> dict:
    """This machine's memory bandwidth in GB/s, measured with float32 adds of n elements
    counted as 3 arrays (12 B per element), as ``mlscale bench kernels`` does.

    Returns {'np.add(a, b, out=c)': .., 'np.add(a, b, out=a)': .., 'numba c = a + b': ..,
    'numba a = a + b': ..}. NumPy runs one thread; a fresh output ``c`` also costs a
    hidden write-allocate read, so the in-place adds come out faster. Use n well above
    the last-level cache (the default 4M floats is 16 MB per array).
    """
    n = _check_n("add_bandwidth", n)
    rng = np.random.default_rng(seed)
    a, b, c = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    add = numba_add()
    fns = {"np.add(a, b, out=c)": lambda: np.add(a, b, out=c),
           "np.add(a, b, out=a)": lambda: np.add(a, b, out=a),
           "numba c = a + b": lambda: add(a, b, c),
           "numba a = a + b": lambda: add(a, b, a)}
    ts = _best_many(list(fns.values()), repeats)
    return {name: 12 * n / t / 1e9 for name, t in zip(fns, ts)}


@dataclass
class Throughput:
    """Best times (s) and GB/s of some functions, and the bound measured beside them."""

    seconds: dict
    gb_s: dict
    bound_gb_s: float
    bound: str                                      # what the bound is
    bound_runs: dict = field(default_factory=dict)  # GB/s of each bound measurement

    def fraction(self, name: str) -> float:
        """GB/s of ``name`` as a fraction of the bound (1.0 = at the memory bound)."""
        return self.gb_s[name] / self.bound_gb_s

    def speedup(self, name: str, baseline: str) -> float:
        """How many times faster ``name`` ran than ``baseline``."""
        return self.seconds[baseline] / self.seconds[name]


def throughput(fns: dict, nbytes: float, n_bound: int, repeats: int = 5, device: str = "cpu",
               seed: int = 0) -> Throughput:
    """Time each function of ``fns`` ({name: fn()}), which must each move ``nbytes`` bytes,
    interleaved with the memory-bound measurement of ``n_bound`` float32 elements.

    device='cpu': the bound is the best in-place add ``a = a + b`` (NumPy or numba, 3
    arrays). device='gpu': fns must launch CuPy / numba-CUDA work; every run is followed
    by a device synchronize and the bound is a device-to-device copy (2 arrays).
    """
    if not fns:
        raise ValueError("throughput: fns is empty; pass {name: function} to time")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"throughput: device={device!r}; use 'cpu' or 'gpu'")
    n_bound = _check_n("throughput", n_bound)
    rng = np.random.default_rng(seed)
    sync = None
    if device == "cpu":
        a, b = (rng.standard_normal(n_bound).astype(np.float32) for _ in range(2))
        add = numba_add()
        bounds = {"NumPy a = a + b": (12 * n_bound, lambda: np.add(a, b, out=a)),
                  "numba a = a + b": (12 * n_bound, lambda: add(a, b, a))}
        what = "in-place add a = a + b (3 arrays), best of NumPy and numba"
    else:                                            # pragma: no cover - needs a GPU
        import cupy as cp

        sync = cp.cuda.Device().synchronize
        a = cp.asarray(rng.standard_normal(n_bound).astype(np.float32))
        b = cp.empty_like(a)
        bounds = {"device copy": (8 * n_bound, lambda: cp.copyto(b, a))}
        what = "device-to-device copy (2 arrays)"
    names = list(fns)
    ts = _best_many([fns[k] for k in names] + [fn for _, fn in bounds.values()], repeats, sync)
    seconds = dict(zip(names, ts))
    runs = {k: nb / t / 1e9 for (k, (nb, _)), t in zip(bounds.items(), ts[len(names):])}
    return Throughput(seconds=seconds, gb_s={k: nbytes / t / 1e9 for k, t in seconds.items()},
                      bound_gb_s=max(runs.values()), bound=what, bound_runs=runs)
