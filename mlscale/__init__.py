"""mlscale: distributed machine learning you can run, from simulated ranks to GPUs.

    import mlscale as ms
    def program(comm):
        return comm.all_reduce(np.full(8, comm.rank), algorithm="ring")
    ms.launch(program, world_size=4)                  # simulated ranks
    ms.launch(program, world_size=4, backend="mpi")   # MPI processes

``import mlscale`` never imports cupy, and works on machines without a GPU.
"""
__version__ = "0.1.0"

from .comm import (  # noqa: E402,F401
    ANY_SOURCE,
    BackendUnavailable,
    CommError,
    Communicator,
    DeadlockError,
    NetworkModel,
    RankFailure,
    Request,
    TimeoutError,
    launch,
)
from .doctor import doctor  # noqa: E402,F401
