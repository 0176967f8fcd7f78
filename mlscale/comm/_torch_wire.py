"""What ``TorchComm(device="gpu")`` needs (clear errors, named fixes), and the layer that
turns the engine's arrays into torch tensors for the payload group: NumPy through DLPack
on a CPU (gloo), CuPy through DLPack on a GPU (NCCL), with the stream synchronisation
described in :mod:`mlscale.comm.torch_nccl`. Imports neither torch nor cupy itself."""
from __future__ import annotations

import os
from datetime import timedelta

import numpy as np

from .errors import BackendUnavailable, CommError
from .torch_dist import _GLOO_REDUCE, timeout_seconds

_CUDA_WHEEL = "pip install torch --index-url https://download.pytorch.org/whl/cu126"
#: dtypes torch's ProcessGroupNCCL reduces (the rest run mlscale's algorithm)
_NCCL_REDUCE = {np.dtype(t) for t in ("i1", "u1", "i4", "i8", "f2", "f4", "f8")}


# ---------------------------------------------------------------- what device="gpu" needs
def gpu_requirements(torch, dist):
    """CuPy, where ``device="gpu"`` can run; otherwise BackendUnavailable naming what is
    missing and the fix, checked in this order: a CUDA GPU torch can use, NCCL in this
    torch build, CuPy."""
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BackendUnavailable(
            f"backend='torch', device='gpu' needs a CUDA GPU that PyTorch can use, and torch.cuda.is_available() "
            f"is False (torch {torch.__version__}, {build}). On a GPU machine install a CUDA build of torch "
            f"({_CUDA_WHEEL}) and check that nvidia-smi lists the GPUs; without a GPU use device='cpu' (gloo)")
    if not dist.is_nccl_available():
        raise BackendUnavailable(
            f"backend='torch', device='gpu' needs NCCL, and this PyTorch ({torch.__version__}) was built without it "
            "(torch.distributed.is_nccl_available() is False: Linux CUDA wheels have NCCL, Windows and macOS ones "
            f"do not). Install a Linux CUDA build ({_CUDA_WHEEL}), or use device='cpu' (gloo)")
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        major = (torch.version.cuda or "12").split(".")[0]
        raise BackendUnavailable(
            f"backend='torch', device='gpu' hands CuPy arrays in and out, and CuPy cannot be imported "
            f"({type(e).__name__}: {e}): pip install cupy-cuda{major}x (CUDA {major}, as this torch), or "
            'pip install "mlscale[gpu]"') from None
    return cupy


def check_gpu_world(torch, world_size):
    """ms.launch on one machine: one GPU for every rank, or BackendUnavailable."""
    n = torch.cuda.device_count()
    if world_size > n:
        raise BackendUnavailable(
            f"backend='torch', device='gpu': world_size={world_size} but this machine has {n} GPU(s), and NCCL "
            f"needs a GPU of its own for every rank; use world_size <= {n}, or backend='sim', device='gpu' "
            "(N logical GPUs on one device)")


def local_gpu(torch, rank):
    """This rank's GPU: $LOCAL_RANK (torchrun and ms.launch set it; else the rank), checked
    against the GPUs of this node."""
    local = int(os.environ.get("LOCAL_RANK", rank))
    n = torch.cuda.device_count()
    if local >= n:
        raise BackendUnavailable(
            f"backend='torch', device='gpu': rank {rank} is local rank {local} on its node, which has {n} GPU(s), "
            f"and NCCL needs a GPU of its own for every rank: start at most {n} ranks per node "
            f"(torchrun --nproc-per-node {n}), or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
    return local


# ---------------------------------------------------------------- arrays <-> tensors
class _HostWire:
    """NumPy arrays as CPU tensors through DLPack, the payload group gloo: the two-group
    path on a machine without a GPU."""

    name = "gloo"
    reducible = _GLOO_REDUCE

    def __init__(self, torch):
        self.torch, self.xp, self.device, self.index = torch, np, torch.device("cpu"), None

    def tensor(self, a):
        return self.torch.from_dlpack(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def asarray(self, x, comm):  # None: Communicator._as_array's NumPy rules
        return None

    def into(self, out, buf):
        out[...] = buf

    def before(self):
        pass

    def after(self):
        pass

    def payload_group(self, dist, store, rank, size):
        return dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=timeout_seconds()))


class _CudaWire(_HostWire):
    """CuPy arrays on GPU ``index`` as CUDA tensors through DLPack, the payload group NCCL."""

    name = "NCCL"
    reducible = _NCCL_REDUCE

    def __init__(self, torch, cupy, index):
        self.torch, self.cupy, self.xp, self.index = torch, cupy, cupy, int(index)
        self.device = torch.device("cuda", self.index)

    def empty(self, shape, dtype):
        with self.cupy.cuda.Device(self.index):
            return self.cupy.empty(shape, dtype)

    def zeros(self, shape, dtype):
        with self.cupy.cuda.Device(self.index):
            return self.cupy.zeros(shape, dtype)

    def asarray(self, x, comm):
        cp = self.cupy
        if isinstance(x, cp.ndarray):
            if x.device.id != self.index:
                raise CommError(f"{comm._describe()}: an array on GPU {x.device.id}, and this rank's GPU is "
                                f"{self.index}; copy it first (cupy.asarray(x) inside cupy.cuda.Device({self.index}))")
            return x
        with cp.cuda.Device(self.index):  # NumPy (and anything array-like): copied to this rank's GPU
            return cp.asarray(x)

    def into(self, out, buf):
        out[...] = buf if isinstance(out, self.cupy.ndarray) else buf.get()

    def before(self):
        self.cupy.cuda.get_current_stream().synchronize()

    def after(self):
        self.torch.cuda.current_stream(self.device).synchronize()

    def payload_group(self, dist, store, rank, size):
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timedelta(seconds=timeout_seconds())
        opts.is_high_priority_stream = False
        return dist.ProcessGroupNCCL(store, rank, size, opts)


def _bytes(a):
    return a.reshape(-1).view(np.uint8)


def _coalesces(pg, device):
    """Whether ``pg`` batches point-to-point calls (NCCL does; gloo posts each at once)."""
    backend = pg
    if hasattr(pg, "_get_backend"):
        try:
            backend = pg._get_backend(device)
        except Exception:  # noqa: BLE001 - no backend for this device: no batching
            return False
    return bool(getattr(backend, "supports_coalescing", False))
