"""Checker for the GPU-kernel exercise (notebook 10): the ring step as a numba-CUDA kernel.

The learner writes

    @cuda.jit
    def my_reduce_chunk(dst, src, scale):     # dst = (dst + src) * scale, in place
        ...

and :func:`reduce_chunk_kernel` launches it (on the GPU, or in numba's CUDA simulator
without one) on awkward lengths (1, BLOCK-1, BLOCK, 3*BLOCK+5 with BLOCK = 128) and
three launch shapes: one thread per element (the last block hangs over the end: a bounds
check is needed), a grid smaller than n (2 blocks of 32 threads: a grid-stride loop is
needed), and a single thread. The oracle is
:func:`mlscale.ops.reduce_chunk_reference`. Arrays are views into larger buffers whose
tails hold a sentinel, so a write past the end shows up on a GPU too (the simulator
raises IndexError on its own).
"""
from __future__ import annotations

import inspect

import numpy as np

from ..ops import BLOCK, reduce_chunk_reference
from ..ops._common import cuda
from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

SIZES = (1, BLOCK - 1, BLOCK, 3 * BLOCK + 5)
SENTINEL = 12345.0
# (name, blocks for n, threads per block, dtype, scale, sizes)
LAUNCHES = (
    ("one thread per element", lambda n: -(-n // BLOCK), BLOCK, np.float32, 0.5, SIZES),
    ("a grid of 2 x 32 threads", lambda n: 2, 32, np.float64, 1 / 3, SIZES),
    ("a single thread", lambda n: 1, 1, np.float32, -2.0, (3 * BLOCK + 5,)),
)
TOL = {np.dtype(np.float32): (1e-6, 1e-6), np.dtype(np.float64): (1e-12, 1e-12)}

REDUCE_CHUNK_HINT = """\
A kernel runs once per thread; each thread finds its elements from its index:
  i = cuda.grid(1)           # blockIdx.x * blockDim.x + threadIdx.x
  stride = cuda.gridsize(1)  # gridDim.x * blockDim.x: threads in the whole grid
  while i < dst.size:        # the bounds check AND the grid-stride loop in one line
      dst[i] = (dst[i] + src[i]) * scale
      i += stride
Why both: the last block usually hangs over the end of the array (n is rarely a multiple
of the block size), and a grid may have fewer threads than n elements (the launch picks
the grid, not the kernel), so each thread must handle i, i + stride, i + 2 stride, ...
Still stuck? from mlscale.check import solution; solution("reduce_chunk_kernel")"""


@cuda.jit
def reduce_chunk_solution(dst, src, scale):
    """dst = (dst + src) * scale, in place: a grid-stride loop (any grid, any n)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < dst.size:
        dst[i] = (dst[i] + src[i]) * scale
        i += stride


def _is_stub(kernel) -> bool:
    """True when the kernel's body still holds the stub's ``raise NotImplementedError`` as a
    statement run on every call (a top-level statement of the body). Read from the syntax
    tree, not the text: the line left in a comment or a docstring is not a stub, and a
    kernel on a real GPU cannot raise for the checker to catch."""
    import ast
    import textwrap

    try:
        src = textwrap.dedent(inspect.getsource(getattr(kernel, "py_func", kernel)))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return False
    fn = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fn is None:
        return False
    for stmt in fn.body:
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def _inputs(n, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype))


def _launch(kernel, blocks, threads, dst, src, scale):
    """Launch on device views of length n whose buffers run on past the end (sentinels).
    Returns (dst after, src after, dst's tail, src's tail) on the host."""
    n = dst.size
    pad = blocks * threads + 1            # room for every thread's first element past n
    bufs = []
    for a in (dst, src):
        b = np.full(n + pad, SENTINEL, dtype=a.dtype)
        b[:n] = a
        bufs.append(cuda.to_device(b))
    kernel[blocks, threads](bufs[0][:n], bufs[1][:n], dst.dtype.type(scale))
    hd, hs = (b.copy_to_host() for b in bufs)
    return hd[:n], hs[:n], hd[n:], hs[n:]


def _diagnose(got, want, dst0, dst_plus_src, scale, threads_total, rtol, atol):
    """A sentence on what is wrong with ``got``, or None when it is right."""
    ok = np.isclose(got, want, rtol=rtol, atol=atol)
    if ok.all():
        return None
    bad = np.flatnonzero(~ok)
    untouched = got == dst0
    n = got.size
    if threads_total < n and ok[:threads_total].all() and untouched[threads_total:].all():
        return (f"elements {threads_total}..{n - 1} were not updated: the grid has only "
                f"{threads_total} thread{'s' if threads_total > 1 else ''} for n = {n} elements; "
                "loop over i, i + stride, ... "
                "with stride = cuda.gridsize(1) (a grid-stride loop)")
    if untouched.all():
        return "dst was not changed at all: write (dst[i] + src[i]) * scale into dst[i]"
    if scale != 1 and np.allclose(got, dst_plus_src, rtol=rtol, atol=atol):
        return "dst is dst + src: multiply by scale"
    src0 = dst_plus_src - dst0
    if np.allclose(got, dst0 * scale + src0, rtol=rtol, atol=atol):
        return "dst is dst * scale + src: add first, then scale: dst[i] = (dst[i] + src[i]) * scale"
    i = int(bad[0])
    times = _times_updated(got[i], dst0[i], src0[i], scale, min(threads_total, 16), rtol, atol)
    if times and times > 1:
        return (f"element {i} was updated {times} times, not once: several threads handle the same "
                "element. Start at i = cuda.grid(1) (blockIdx.x * blockDim.x + threadIdx.x, not "
                "threadIdx.x alone) and step by stride = cuda.gridsize(1) (the whole grid, not one block)")
    return (f"element {i} is {got[i]:.7g}, expected (dst + src) * scale = {want[i]:.7g} "
            f"(dst = {dst0[i]:.7g}, src = {dst_plus_src[i] - dst0[i]:.7g}, scale = {scale:.7g}); "
            f"{bad.size} of {n} elements wrong")


def _times_updated(got, d, s, scale, most, rtol, atol):
    """How many times (d + s) * scale was applied to d to give ``got`` (2..most), or None."""
    for k in range(2, most + 1):
        d = (d + s) * scale
        if np.isclose(got, (d + s) * scale, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6)):
            return k
    return None


def reduce_chunk_kernel(kernel, verbose=True):
    """Check a learner's numba-CUDA kernel ``kernel[blocks, threads](dst, src, scale)``
    computing ``dst = (dst + src) * scale`` in place, for any grid and any length.

    Lengths 1, 127, 128, 389; launches of one thread per element (float32, scale 0.5),
    2 blocks of 32 threads (float64, scale 1/3) and a single thread (float32, scale -2).
    Each result must equal :func:`mlscale.ops.reduce_chunk_reference`, src must be left
    as it was, and nothing past the end of either array may be written.
    """
    res = CheckResult("reduce_chunk_kernel")
    if _is_stub(kernel):
        res.not_implemented = True
        return res.done(verbose)
    if not hasattr(kernel, "__getitem__"):
        res.cases += 1
        res.failures.append(f"{getattr(kernel, '__name__', kernel)!r} is not a CUDA kernel: "
                            "decorate it with @cuda.jit (from numba import cuda), then launch it "
                            "as kernel[blocks, threads](dst, src, scale)")
        return res.done(verbose)
    for k, (name, blocks_for, threads, dtype, scale, sizes) in enumerate(LAUNCHES):
        rtol, atol = TOL[np.dtype(dtype)]
        for n in sizes:
            res.cases += 1
            blocks = blocks_for(n)
            case = f"n={n}, {name} ({blocks} x {threads}), {np.dtype(dtype).name}, scale={scale:.4g}"
            dst0, src0 = _inputs(n, dtype, seed=100 * k + n)
            want = reduce_chunk_reference(dst0.copy(), src0, scale)
            out = run_case(res, case, lambda: _launch(kernel, blocks, threads, dst0, src0, scale))
            if out is NOT_IMPLEMENTED:
                return res.done(verbose)
            if out is None:                    # it raised: make an index error say why
                msg = res.failures[-1]
                if "IndexError" in msg or "out of bounds" in msg:
                    res.failures[-1] = (msg.split(": tid=")[0] + ": a thread indexed past the end "
                                        f"of the arrays (n = {n}, {blocks * threads} threads): "
                                        "guard with `if i < dst.size` (or `while i < dst.size`)")
                continue
            got, src_after, dst_tail, src_tail = out
            if not (np.all(dst_tail == SENTINEL) and np.all(src_tail == SENTINEL)):
                res.failures.append(f"{case}: wrote past the end of the arrays ({blocks * threads} "
                                    f"threads, n = {n}): guard with `if i < dst.size` (or "
                                    "`while i < dst.size`)")
                continue
            if not np.array_equal(src_after, src0):
                res.failures.append(f"{case}: src was changed; only dst is written")
                continue
            bad = _diagnose(got, want, dst0, dst0 + src0, scale, blocks * threads, rtol, atol)
            if bad:
                res.failures.append(f"{case}: {bad}")
    return res.done(verbose)


# the Python source, decorator included (inspect.getsource of the kernel's py_func)
register("reduce_chunk_kernel", REDUCE_CHUNK_HINT,
         getattr(reduce_chunk_solution, "py_func", reduce_chunk_solution))
