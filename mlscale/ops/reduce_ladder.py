"""The reduction ladder in numba-CUDA: sum_v0 .. sum_v6, twins of kernels/reduce.cu.

After Mark Harris, "Optimizing Parallel Reduction in CUDA" (NVIDIA 2007). Each version
sums a float32 array into one partial per block; the driver launches again on the
partials until one value is left (as Harris does). Read them in order; each fixes what
slowed the one before:

  v0  interleaved addressing, divergent branch (tid % 2s)
  v1  interleaved addressing, strided index (no divergence; bank conflicts)
  v2  sequential addressing (conflict-free; half the threads idle at once)
  v3  first add during the global load (half the blocks)
  v4  unroll the last warp (no barrier for s <= 32)
  v5  complete unroll for a compile-time block size
  v6  grid-stride loads + warp shuffles (registers, one shared slot per warp)

All read 4 bytes per element for 1 flop: memory-bound. ``sum_cupy(x, version)`` runs the
CUDA C twins with CuPy. In numba's CUDA simulator (no GPU) threads run freely, not in
lock-step warps, and it has neither shuffles nor __syncwarp: there, ``_syncwarp`` and
``_shfl_down`` below are stand-ins built on the block barrier and shared memory, so the
kernels' logic is still tested; on a GPU they are the real instructions.
"""
from __future__ import annotations

import numpy as np
from numba import float32

from . import _common as C
from ._common import cuda

BLOCK = C.BLOCK                  # a compile-time constant for the kernels below
MAX_BLOCKS_V6 = 1024
MAX_GRID_X = 2**31 - 1  # CUDA's limit on blocks in x
VERSIONS = tuple(range(7))


# ---- warp-level stand-ins for the simulator ---------------------------------------------
if C.SIM:
    @cuda.jit(device=True)
    def _syncwarp():
        cuda.syncthreads()       # simulator: the threads still running are the warp's

    @cuda.jit(device=True)
    def _shfl_down(scratch, v, offset):
        tid = cuda.threadIdx.x
        cuda.syncthreads()       # everyone has read the previous round
        scratch[tid] = v
        cuda.syncthreads()
        if tid % 32 + offset < 32:
            return scratch[tid + offset]
        return v
else:
    @cuda.jit(device=True)
    def _syncwarp():
        cuda.syncwarp(0xFFFFFFFF)

    @cuda.jit(device=True)
    def _shfl_down(scratch, v, offset):
        return cuda.shfl_down_sync(0xFFFFFFFF, v, offset)


@cuda.jit(device=True)
def _warp_reduce(s, tid):
    # read, sync the warp, write: safe under independent thread scheduling (Volta+)
    off = 32
    while off > 0:
        v = s[tid] + s[tid + off]
        _syncwarp()
        s[tid] = v
        _syncwarp()
        off //= 2


# ---- v0 .. v2: one element per thread --------------------------------------------------
@cuda.jit
def _reduce0(x, out):
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + tid
    sdata[tid] = x[i] if i < x.size else float32(0)
    cuda.syncthreads()
    s = 1
    while s < cuda.blockDim.x:
        if tid % (2 * s) == 0:
            sdata[tid] += sdata[tid + s]
        cuda.syncthreads()
        s *= 2
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


@cuda.jit
def _reduce1(x, out):
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + tid
    sdata[tid] = x[i] if i < x.size else float32(0)
    cuda.syncthreads()
    s = 1
    while s < cuda.blockDim.x:
        index = 2 * s * tid
        if index < cuda.blockDim.x:
            sdata[index] += sdata[index + s]
        cuda.syncthreads()
        s *= 2
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


@cuda.jit
def _reduce2(x, out):
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    i = cuda.blockIdx.x * cuda.blockDim.x + tid
    sdata[tid] = x[i] if i < x.size else float32(0)
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            sdata[tid] += sdata[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


# ---- v3 .. v5: two elements per thread on load -----------------------------------------
@cuda.jit(device=True)
def _load_two(x, i, bs):
    v = x[i] if i < x.size else float32(0)
    if i + bs < x.size:
        v += x[i + bs]
    return v


@cuda.jit
def _reduce3(x, out):
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    sdata[tid] = _load_two(x, cuda.blockIdx.x * (cuda.blockDim.x * 2) + tid, cuda.blockDim.x)
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            sdata[tid] += sdata[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


@cuda.jit
def _reduce4(x, out):
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    sdata[tid] = _load_two(x, cuda.blockIdx.x * (cuda.blockDim.x * 2) + tid, cuda.blockDim.x)
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 32:
        if tid < s:
            sdata[tid] += sdata[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid < 32:
        _warp_reduce(sdata, tid)
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


@cuda.jit
def _reduce5(x, out):
    # BLOCK is a global constant: numba folds each "if BLOCK >= ..." at compile time
    sdata = cuda.shared.array(BLOCK, float32)
    tid = cuda.threadIdx.x
    sdata[tid] = _load_two(x, cuda.blockIdx.x * (BLOCK * 2) + tid, BLOCK)
    cuda.syncthreads()
    if BLOCK >= 512:
        if tid < 256:
            sdata[tid] += sdata[tid + 256]
        cuda.syncthreads()
    if BLOCK >= 256:
        if tid < 128:
            sdata[tid] += sdata[tid + 128]
        cuda.syncthreads()
    if BLOCK >= 128:
        if tid < 64:
            sdata[tid] += sdata[tid + 64]
        cuda.syncthreads()
    if tid < 32:
        _warp_reduce(sdata, tid)
    if tid == 0:
        out[cuda.blockIdx.x] = sdata[0]


# ---- v6: grid-stride + warp shuffles ---------------------------------------------------
@cuda.jit
def _reduce6(x, out):
    warp_sums = cuda.shared.array(32, float32)
    scratch = cuda.shared.array(BLOCK, float32)     # used by the simulator's stand-in only
    tid = cuda.threadIdx.x
    v = float32(0)
    i = cuda.grid(1)
    while i < x.size:
        v += x[i]
        i += cuda.gridsize(1)
    off = 16
    while off > 0:
        v += _shfl_down(scratch, v, off)
        off //= 2
    if tid % 32 == 0:
        warp_sums[tid // 32] = v
    cuda.syncthreads()
    v = warp_sums[tid] if tid < BLOCK // 32 else float32(0)   # warp 0 sums the warp sums
    off = 16
    while off > 0:
        v += _shfl_down(scratch, v, off)
        off //= 2
    if tid == 0:
        out[cuda.blockIdx.x] = v


_KERNELS = (_reduce0, _reduce1, _reduce2, _reduce3, _reduce4, _reduce5, _reduce6)


def _blocks(version: int, n: int) -> int:
    """Blocks of the first pass. v0..v5 have no grid-stride loop (one, or from v3 two,
    elements per thread), so their grid must cover n: no 65535 cap (CUDA allows 2^31-1
    blocks in x). v6 strides over the grid, with a fixed number of blocks."""
    if version <= 2:
        return C.grid_for(n, max_blocks=MAX_GRID_X)
    if version <= 5:
        return C.grid_for(n, 2 * BLOCK, max_blocks=MAX_GRID_X)
    return C.grid_for(n, max_blocks=MAX_BLOCKS_V6)


def _check(x, op):
    kind = C.array_kind(x)
    if kind == "other":
        raise TypeError(f"{op}: x is a {type(x).__name__}; pass a float32 array")
    if np.dtype(x.dtype) != np.float32:
        raise TypeError(f"{op}: the ladder sums float32 (as Harris does), got {x.dtype}; "
                        "pass x.astype(np.float32)")
    C.check_contiguous(op, "cuda" if op.startswith("sum_v") else "cupy", x=x)


def _sum_cuda(x, version: int) -> float:
    _check(x, f"sum_v{version}")
    d = C.flat(C.to_cuda(x))
    if d.size == 0:
        return 0.0
    cuda_ = C.cuda_module()
    while True:                                   # at least one launch, even for n = 1
        blocks = _blocks(version, d.size)
        out = cuda_.device_array(blocks, dtype=np.float32)
        _KERNELS[version][blocks, BLOCK](d, out)
        d = out
        if blocks == 1:
            break
    return float(d.copy_to_host()[0])


def sum_v0(x) -> float:
    """Sum of a float32 array (numpy or device) with ladder kernel v0 (see module doc)."""
    return _sum_cuda(x, 0)


def sum_v1(x) -> float:
    return _sum_cuda(x, 1)


def sum_v2(x) -> float:
    return _sum_cuda(x, 2)


def sum_v3(x) -> float:
    return _sum_cuda(x, 3)


def sum_v4(x) -> float:
    return _sum_cuda(x, 4)


def sum_v5(x) -> float:
    return _sum_cuda(x, 5)


def sum_v6(x) -> float:
    return _sum_cuda(x, 6)


def sum_cupy(x, version: int = 6) -> float:
    """Sum of a float32 array with kernels/reduce.cu kernel ``reduce<version>`` (CuPy)."""
    if version not in VERSIONS:
        raise ValueError(f"sum_cupy: version={version!r}; use one of {VERSIONS}")
    _check(x, "sum_cupy")
    cp = C.import_cupy()
    d = C.to_cupy(x).reshape(-1)
    if d.size == 0:
        return 0.0
    name = f"reduce5_{BLOCK}" if version == 5 else f"reduce{version}"
    k = C.cupy_kernel("reduce.cu", name)
    while True:
        blocks = _blocks(version, d.size)
        out = cp.empty(blocks, dtype=cp.float32)
        k((blocks,), (BLOCK,), (d, out, np.int64(d.size)))
        d = out
        if blocks == 1:
            break
    return float(d[0])


SUMS = (sum_v0, sum_v1, sum_v2, sum_v3, sum_v4, sum_v5, sum_v6)
