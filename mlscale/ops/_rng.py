"""A counter-based random number: u(seed, i) in [0, 1), the same in every implementation.

splitmix64 (Steele, Lea, Flood 2014) of seed + (i + 1) * golden gamma; the top 53 bits
give a double. NumPy, numba, numba-CUDA and CUDA C (kernels/qsgd.cu) compute the same
bits, so with one seed every implementation draws the same numbers: QSGD's stochastic
rounding can be compared exactly across implementations, and needs no RNG state on the GPU.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._common import cuda

GAMMA = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
S30, S27, S31, S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
ONE = np.uint64(1)
INV53 = 1.0 / 9007199254740992.0          # 2^-53


def uniform_reference(seed: int, n: int) -> np.ndarray:
    """u(seed, i) for i = 0..n-1 (uint64 arrays wrap modulo 2^64, as the kernels do)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(n, dtype=np.uint64) + ONE) * GAMMA
        z = (z ^ (z >> S30)) * M1
        z = (z ^ (z >> S27)) * M2
        z = z ^ (z >> S31)
    return (z >> S11).astype(np.float64) * INV53


@njit(cache=True, inline="always")
def uniform_numba(seed, i):
    z = seed + (np.uint64(i) + ONE) * GAMMA
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    z = z ^ (z >> S31)
    return np.float64(z >> S11) * INV53


@cuda.jit(device=True)
def uniform_cuda(seed, i):
    z = seed + (np.uint64(i) + ONE) * GAMMA
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    z = z ^ (z >> S31)
    return np.float64(z >> S11) * INV53


def make_seed(seed) -> np.uint64:
    """An int seed as is; a np.random.Generator draws one; None draws from fresh entropy."""
    if seed is None:
        seed = np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**63))
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed={seed!r}: pass a non-negative int, a np.random.Generator or None")
    return np.uint64(int(seed) % 2**64)
