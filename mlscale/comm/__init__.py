"""Communicators and their engines: ``sim`` (default), ``mpi``, ``nccl``, ``torch``."""
from .base import ANY_SOURCE, Communicator, Request, wait_all  # noqa: F401
from .errors import BackendUnavailable, CommError, DeadlockError, RankFailure, TimeoutError  # noqa: F401
from .network import NetworkModel  # noqa: F401
from .launch import launch  # noqa: F401


def MPIComm(*args, **kwargs):
    """The MPI engine over mpi4py (``mpiexec -n 4 python script.py``)."""
    from .mpi import MPIComm as _MPIComm

    return _MPIComm(*args, **kwargs)


def NCCLComm(*args, **kwargs):
    """The NCCL engine over cupy.cuda.nccl, one rank per GPU."""
    from .nccl import NCCLComm as _NCCLComm

    return _NCCLComm(*args, **kwargs)


def TorchComm(*args, **kwargs):
    """The torch engine over torch.distributed: gloo, NumPy arrays (``device="cpu"``), or NCCL
    with a gloo control group, CuPy arrays (``device="gpu"``); ``torchrun --nproc-per-node 4 script.py``."""
    from .torch_dist import TorchComm as _TorchComm

    return _TorchComm(*args, **kwargs)
