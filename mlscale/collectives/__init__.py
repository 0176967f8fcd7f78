"""Collective algorithms, written once on ``send``/``recv``/``sendrecv`` alone.

Each function takes ``(comm, ...)`` and works on any engine and any world size
(1, 3, 5, 7 included) and any length (smaller than world_size, not divisible by it).
:mod:`mlscale.collectives.cost` holds the alpha-beta-gamma model of each one.
"""
from . import allreduce, alltoall, gathers, hierarchical, rooted  # noqa: F401

ALGORITHMS = {
    "all_reduce": {
        "naive": allreduce.naive,
        "tree": allreduce.tree,
        "ring": allreduce.ring,
        "recursive_doubling": allreduce.recursive_doubling,
        "rabenseifner": allreduce.rabenseifner,
    },
    "reduce_scatter": {
        "naive": gathers.reduce_scatter_naive,
        "ring": gathers.reduce_scatter_ring,
        "recursive_halving": gathers.reduce_scatter_halving,
    },
    "all_gather": {
        "naive": gathers.all_gather_naive,
        "ring": gathers.all_gather_ring,
        "recursive_doubling": gathers.all_gather_doubling,
    },
    "broadcast": {"linear": rooted.broadcast_linear, "tree": rooted.broadcast_tree},
    "reduce": {"linear": rooted.reduce_linear, "tree": rooted.reduce_tree},
    "gather": {"linear": rooted.gather_linear},
    "scatter": {"linear": rooted.scatter_linear},
    "all_to_all": {"pairwise": alltoall.pairwise, "bruck": alltoall.bruck, "linear": alltoall.linear},
}

#: MPICH switches from recursive doubling to Rabenseifner above this many bytes
SHORT_MSG_BYTES = 2048


def default_algorithm(name, comm, x):
    """What the ``sim`` engine uses for ``algorithm=None``: MPICH's choice by size."""
    if name == "all_reduce":
        if x.nbytes <= SHORT_MSG_BYTES or x.size < comm.world_size:
            return "recursive_doubling"
        return "rabenseifner"
    if name == "reduce_scatter":
        return "ring"
    if name == "all_gather":
        return "recursive_doubling" if x.nbytes * comm.world_size <= 81920 else "ring"
    if name in ("broadcast", "reduce"):
        return "tree"
    return "linear"
