"""Named errors of the communication layer.

Every message says which rank(s), which operation, and what to do about it.
"""


class CommError(RuntimeError):
    """Bad use of a communicator: mismatched shapes/dtypes between ranks, an unknown
    algorithm or op, a bad rank or tag, a world size an algorithm cannot take."""


class DeadlockError(CommError):
    """Every live rank is blocked and no message can unblock any of them (``sim``)."""


class RankFailure(CommError):
    """A peer rank died (``NetworkModel(failures=...)`` on ``sim``, a lost process on ``mpi``)."""

    def __init__(self, msg, failed_rank=None):
        super().__init__(msg)
        self.failed_rank = failed_rank


class TimeoutError(CommError):  # noqa: A001 - deliberately shadows the builtin inside mlscale
    """A receive or wait ran past its (virtual, on ``sim``) timeout."""


class BackendUnavailable(CommError):
    """The engine asked for cannot run here (no MPI, no GPU, no cupy, no NCCL)."""
