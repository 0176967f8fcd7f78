"""``launch(fn, world_size, ...)``: run ``fn(comm, *args)`` on every rank of an engine."""
from __future__ import annotations

import numpy as np

from .errors import BackendUnavailable, CommError

BACKENDS = ("sim", "mpi", "nccl", "torch")


class Results(list):
    """The ranks' return values, indexed by rank, plus what the run recorded:
    ``trace`` (sim: every message), ``clocks`` (each rank's final virtual time),
    ``time`` (the largest), ``failed`` ({rank: time of death})."""

    backend = "sim"
    trace = None
    clocks = None
    failed = None

    @property
    def time(self):
        return max(self.clocks) if self.clocks else None


def launch(fn, world_size, args=(), backend="sim", device="cpu", network=None, timeout=None, trace=True,
           mpiexec_args=()):
    """Call ``fn(comm, *args)`` on ``world_size`` ranks and return their results.

    backend  "sim" (default; ranks simulated in this process), "mpi" (MPI processes
             through mpiexec), "nccl" (one process per GPU), "torch" (processes joined by a
             torch.distributed gloo group; started by mpiexec as "mpi" is; needs
             ``pip install "mlscale[torch]"``; with device="gpu": NCCL, one GPU per rank)
    device   "cpu" or "gpu" (sim with "gpu": every rank's arrays are CuPy arrays on the
             one GPU of this machine; "N logical GPUs on one device"; torch with "gpu":
             CuPy arrays over torch's NCCL, headers over gloo, mlscale.comm.torch_nccl)
    network  a ``NetworkModel`` (sim only)
    timeout  wall-clock seconds for the whole run. sim, called from the main thread: a
             SIGALRM timer raises TimeoutError inside the rank running when the time is up
             (even one spinning in pure Python or in time.sleep), naming that rank; the
             previous SIGALRM handler and timer are restored afterwards. sim off the main
             thread or without SIGALRM (Windows): checked only at scheduler switches, so a
             rank spinning in Python without communicating is not interrupted there.
             mpi/nccl with timeout=None: 300 s, or $MLSCALE_MPI_TIMEOUT seconds ("none": no
             limit), as torch's NCCL watchdog ends a job stuck in a collective; on timeout
             the error says what each rank was waiting in. Sooner than that, a DeadlockError
             ends an mpi/nccl run once a rank has waited 3 s on a rank that had returned,
             or every running rank has waited 9 s on the others ($MLSCALE_MPI_DEADLOCK=3)
             sim, when several ranks raise: the exception of the earliest failure in virtual
             time is raised (ties: the first to raise), with a note listing every other rank
             that raised; once a rank raises at virtual time t, only ranks behind t still run
    mpiexec_args  extra mpiexec arguments for mpi/nccl runs, e.g. ``["-f", "hosts"]``
             (MPICH) to spread the ranks over the machines of a hostfile
    """
    if not callable(fn):
        raise CommError(f"launch needs a function fn(comm, ...) to run on every rank, got {fn!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise CommError(f"world_size={world_size!r} must be a whole number >= 1")
    if backend not in BACKENDS:
        raise CommError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if device not in ("cpu", "gpu"):
        raise CommError(f"unknown device {device!r}: use 'cpu' or 'gpu'")
    if not isinstance(args, (tuple, list)):
        args = (args,)
    world_size = int(world_size)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number))
                                or not np.isfinite(timeout) or timeout <= 0):
        raise CommError(f"timeout={timeout!r} must be a number of wall-clock seconds > 0, or None for no limit")

    if isinstance(mpiexec_args, (str, bytes)):
        import shlex

        text = mpiexec_args if isinstance(mpiexec_args, str) else mpiexec_args.decode()
        raise CommError(
            f"mpiexec_args={mpiexec_args!r} is one string; pass a list with one item per argument, "
            f"e.g. {shlex.split(text)!r} (shlex.split does it)"
        )

    if backend == "sim":
        from .sim import Simulator

        xp = np
        if device == "gpu":
            xp = _cupy_or_explain()
        sim = Simulator(world_size, network, xp=xp, record_trace=trace)
        res = Results(sim.run(fn, tuple(args), timeout=timeout))
        res.backend = "sim"
        res.trace = sim.trace
        res.clocks = [R.clock for R in sim.ranks]
        res.failed = {R.rank: R.died_at for R in sim.ranks if R.died_at is not None}
        return res

    if network is not None:
        raise CommError(
            f"network= models the simulated network; {backend} uses the real one. "
            "Drop network= or use backend='sim'."
        )
    if backend == "mpi":
        from .mpi import launch_mpi

        res = Results(launch_mpi(fn, world_size, tuple(args), device=device, timeout=timeout,
                                 extra_args=tuple(mpiexec_args)))
    elif backend == "torch":
        from .torch_dist import launch_torch

        res = Results(launch_torch(fn, world_size, tuple(args), device=device, timeout=timeout,
                                   extra_args=tuple(mpiexec_args)))
    else:
        from .nccl import launch_nccl

        res = Results(launch_nccl(fn, world_size, tuple(args), timeout=timeout, extra_args=tuple(mpiexec_args)))
    res.backend = backend
    return res


def _cupy_or_explain():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        return cupy
    except Exception as e:  # ImportError, CUDA driver errors
        raise BackendUnavailable(
            f"device='gpu' needs CuPy and a CUDA GPU ({type(e).__name__}: {e}). "
            "On Colab pick a GPU runtime and `pip install cupy-cuda12x`; here use device='cpu'."
        ) from e
