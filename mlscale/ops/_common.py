"""Shared plumbing for mlscale.ops: impl dispatch, argument checks, launch shapes,
and the loader for the CUDA C sources in ``kernels/``.

Every op module imports from here, so the guards live in one place (not copied between
ops) and every op says the same thing, the same way, when it is handed bad input.
cupy is imported lazily, inside functions, never at module import time.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
from numba import config as _numba_config

# numba reads NUMBA_ENABLE_CUDASIM once, when numba is first imported. If numba was
# imported before the variable was set (pytest resolving a numba warning class in its
# filterwarnings does that), re-read it while numba.cuda is not loaded yet, so the
# simulator is used as asked.
if (os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
        and not _numba_config.ENABLE_CUDASIM and "numba.cuda" not in sys.modules):
    _numba_config.reload_config()

try:                                   # numba's CUDA target (numba-cuda, or numba's built-in)
    from numba import cuda
except ImportError as _e:              # pragma: no cover - depends on the install
    _CUDA_ERROR = _e

    class _NoCuda:
        """Stands in for numba.cuda when it cannot be imported: kernels can still be
        defined at module top level; launching one says what to install."""

        def jit(self, fn=None, **kwargs):
            if fn is None:
                return self.jit
            return _NoKernel(fn.__name__)

        def __getattr__(self, name):          # cuda.to_device(...) and friends
            return _NoKernel(f"numba.cuda.{name}")

    class _NoKernel:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, config):
            return self

        def __call__(self, *args):
            raise ImportError(f"{self.name}: numba's CUDA target is not available "
                              f"({_CUDA_ERROR}); pip install numba-cuda") from _CUDA_ERROR

    cuda = _NoCuda()

IMPLS = ("auto", "reference", "numba", "cuda", "cupy")
#: impl="auto" on NumPy arrays uses the numba kernel from this many elements (all arrays
#: together) on, the NumPy reference below: measured crossover on a 2-core VM, 1e5 to 3e5
AUTO_NUMBA_MIN = 1 << 17
BLOCK = 128                      # threads per block for every CUDA kernel (numba-CUDA and .cu)


@cuda.jit(device=True)
def block_sum(sdata, value):
    """Sum ``value`` over the threads of a block: a tree in shared memory ``sdata`` (one
    slot per thread), sequential addressing (Harris's reduce2). Thread 0 gets the total."""
    tid = cuda.threadIdx.x
    sdata[tid] = value
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            sdata[tid] += sdata[tid + s]
        cuda.syncthreads()
        s //= 2
    return sdata[0]
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
SIM = bool(_numba_config.ENABLE_CUDASIM)   # numba's CUDA simulator is on


# ---- what kind of array is it? ---------------------------------------------------------
def array_kind(x) -> str:
    """'numpy', 'cupy' or 'cuda' (a numba device array), without importing cupy."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__ or ""
    if mod.startswith("cupy"):
        return "cupy"
    if hasattr(x, "copy_to_host") and hasattr(x, "shape"):
        return "cuda"
    return "other"


def resolve_impl(op: str, impl: str, **arrays) -> str:
    """Check ``impl`` and that all arrays live in one place; turn 'auto' into a real impl.

    NumPy arrays -> 'numba' (or 'reference' below ``AUTO_NUMBA_MIN`` elements in all: a
    parallel numba kernel spends about 40 us waking its threads, NumPy finishes a small
    update in 5); CuPy arrays -> 'cupy'; numba device arrays -> 'cuda'.
    'cuda' and 'cupy' also take NumPy arrays (copied to the device and back).
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown impl={impl!r}; use one of {', '.join(map(repr, IMPLS))}")
    kinds = {}
    for name, a in arrays.items():
        if a is None:
            continue
        k = array_kind(a)
        if k == "other":
            raise TypeError(f"{op}: argument '{name}' is a {type(a).__name__}, not an array; "
                            "pass a numpy array (or a cupy / numba device array)")
        kinds[name] = k
    found = set(kinds.values())
    if len(found) > 1:
        where = ", ".join(f"{n}={k}" for n, k in kinds.items())
        raise TypeError(f"{op}: arrays live in different places ({where}); move them all to one "
                        "place first (cupy.asarray(x) or cupy.asnumpy(x) / x.copy_to_host())")
    kind = found.pop() if found else "numpy"
    if impl == "auto":
        if kind == "numpy":
            total = sum(a.size for a in arrays.values() if a is not None)
            return "numba" if total >= AUTO_NUMBA_MIN else "reference"
        return {"cupy": "cupy", "cuda": "cuda"}[kind]
    if impl in ("reference", "numba") and kind != "numpy":
        raise TypeError(f"{op}: impl={impl!r} runs on numpy arrays, but got {kind} arrays; "
                        "use impl='auto' (or 'cupy'/'cuda'), or copy them to the host")
    if impl == "cupy" and kind == "cuda":
        raise TypeError(f"{op}: impl='cupy' got numba device arrays; use impl='cuda' or wrap "
                        "them with cupy.asarray(x)")
    return impl


def check_float(op: str, name: str, x) -> None:
    if np.dtype(x.dtype) not in FLOATS:
        raise TypeError(f"{op}: '{name}' has dtype {x.dtype}; use float32 or float64 "
                        f"(e.g. {name}.astype(np.float32))")


def check_like(op: str, name: str, x, ref_name: str, ref) -> None:
    """x must have ref's shape and dtype."""
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"{op}: '{name}' has shape {tuple(x.shape)} but '{ref_name}' has shape "
                         f"{tuple(ref.shape)}; they must match")
    if np.dtype(x.dtype) != np.dtype(ref.dtype):
        raise TypeError(f"{op}: '{name}' has dtype {x.dtype} but '{ref_name}' has dtype "
                        f"{ref.dtype}; cast one (e.g. {name}.astype({ref_name}.dtype))")


def is_contiguous(x) -> bool:
    if isinstance(x, np.ndarray) or array_kind(x) == "cupy":
        return bool(x.flags.c_contiguous)
    return bool(x.is_c_contiguous())


def check_contiguous(op: str, impl: str, **arrays) -> None:
    """Kernels walk flat memory: a strided view would be copied and the update lost."""
    for name, x in arrays.items():
        if x is not None and not is_contiguous(x):
            raise ValueError(f"{op}: impl={impl!r} needs C-contiguous arrays, but '{name}' "
                             f"(shape {tuple(x.shape)}, strides {tuple(x.strides)}) is a strided "
                             f"view; pass np.ascontiguousarray({name}) and copy the result back, "
                             "or use impl='reference'")


def flat(x):
    """A 1-D view of a C-contiguous array (no copy)."""
    return x.reshape(-1)


def as_scalar(dtype, v):
    """Cast a Python scalar to the arrays' dtype, as NumPy does with a weak scalar."""
    return np.dtype(dtype).type(v)


# ---- launch shapes ---------------------------------------------------------------------
def grid_for(n: int, block: int = BLOCK, max_blocks: int = 65535) -> int:
    """Blocks for a grid-stride loop over n elements (at least 1)."""
    return max(1, min((n + block - 1) // block, max_blocks))


# ---- numba-CUDA: numpy in, numpy out ---------------------------------------------------
def cuda_module():
    return cuda


def to_cuda(x):
    """Device view of x: numba device arrays pass through, numpy/cupy are copied/wrapped."""
    cuda = cuda_module()
    if array_kind(x) == "numpy":
        return cuda.to_device(np.ascontiguousarray(x))
    if array_kind(x) == "cupy":
        return cuda.as_cuda_array(x)
    return x


def from_cuda(dev, host) -> None:
    """Copy a device array back into ``host`` when ``host`` is a numpy array."""
    if isinstance(host, np.ndarray):
        host[...] = dev.copy_to_host().reshape(host.shape)


# ---- cupy: lazy import and the .cu loader ----------------------------------------------
def import_cupy():
    try:
        import cupy
    except ImportError as e:   # pragma: no cover - depends on the machine
        raise ImportError("impl='cupy' needs cupy: pip install 'mlscale[gpu]' "
                          "(cupy-cuda12x) on a machine with an NVIDIA GPU") from e
    return cupy


def to_cupy(x):
    cp = import_cupy()
    return x if array_kind(x) == "cupy" else cp.asarray(x)


def from_cupy(dev, host) -> None:
    if isinstance(host, np.ndarray):
        host[...] = dev.get().reshape(host.shape)


def kernel_dirs() -> list[Path]:
    """Where the .cu sources are: in an installed wheel (``mlscale/kernels/``), then in the
    source tree (``<repo>/kernels/``)."""
    pkg = Path(__file__).resolve().parent.parent          # .../mlscale
    return [pkg / "kernels", pkg.parent / "kernels"]


def kernel_path(name: str) -> Path:
    """Path of ``kernels/<name>`` (e.g. 'adam_step.cu') in the wheel or the source tree."""
    for d in kernel_dirs():
        p = d / name
        if p.is_file():
            return p
    raise FileNotFoundError(f"CUDA source {name!r} not found in " + " or ".join(map(str, kernel_dirs()))
                            + "; reinstall mlscale (the wheel ships them in mlscale/kernels/)")


def kernel_source(name: str) -> str:
    return kernel_path(name).read_text()


@functools.lru_cache(maxsize=None)
def cupy_module(name: str, options: tuple = ("-std=c++14",)):
    """cupy.RawModule compiled (by NVRTC) from kernels/<name>, cached per process."""
    cp = import_cupy()
    return cp.RawModule(code=kernel_source(name), options=options)


def cupy_kernel(cu_file: str, func: str):
    return cupy_module(cu_file).get_function(func)


def suffix(dtype) -> str:
    """The extern "C" name suffix for a dtype: f32 or f64."""
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


def as_list(x):
    """A list of arrays from one array or a list/tuple of them; (list, was_sequence)."""
    if isinstance(x, (list, tuple)):
        return list(x), True
    return [x], False


def zip_lists(op: str, **seqs):
    """Zip per-parameter lists given as arrays or equal-length lists (None passes through)."""
    lists = {}
    for name, v in seqs.items():
        lists[name] = None if v is None else as_list(v)[0]
    lens = {n: len(v) for n, v in lists.items() if v is not None}
    if len(set(lens.values())) > 1:
        raise ValueError(f"{op}: got lists of different lengths ({lens}); pass one array per "
                         "parameter in each")
    n = max(lens.values()) if lens else 0
    return [tuple(None if lists[k] is None else lists[k][i] for k in lists) for i in range(n)]
