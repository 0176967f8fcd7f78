"""mlscale: distributed machine learning you can run, from simulated ranks to GPUs.

    import mlscale as ms
    def program(comm):
        return comm.all_reduce(np.full(8, comm.rank), algorithm="ring")
    ms.launch(program, world_size=4)                  # simulated ranks
    ms.launch(program, world_size=4, backend="mpi")   # MPI processes

``import mlscale`` never imports cupy, and works on machines without a GPU.
"""
__version__ = "0.1.0"

import os as _os

# numba's parallel kernels and NumPy's BLAS keep separate thread pools; on a small
# machine (2 cores on Binder or CI) threads that spin while idle starve each other and
# the simulator slows down a hundredfold. Idle threads should sleep. (Set before numba
# starts its threads; a learner's own setting wins.)
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
