"""The communication of tensor parallelism: Megatron-LM's conjugate operators f and g.

Shoeybi et al. 2019, "Megatron-LM" (section 3, figure 3): a transformer MLP
``Y = GeLU(X A)``, ``Z = Y B`` splits A by columns and B by rows over the ranks of a
tensor-parallel group. Two operators move the data, and each is the other's transpose:

==========  ===========================  ===========================
operator    forward                      backward
==========  ===========================  ===========================
f           identity (X is replicated)   all-reduce dX (sum the
            ``copy_to_tp``               partial input gradients)
g           all-reduce the partial       identity (dZ is already
            outputs ``reduce_from_tp``   replicated)
gather      all-gather the column        keep my columns of dY
            shards ``gather_from_tp``    (a split, no communication)
==========  ===========================  ===========================

Here they are small objects with ``forward(x)`` and ``backward(dout)`` (no autograd),
each counting its collectives in ``calls`` and ``nbytes`` (elements times itemsize
handed to the collective), so a test can assert "one all-reduce forward, one backward
per block" and compare with the bytes in the simulator's trace. Every collective uses
the ring (``algorithm="ring"``; each rank sends 2(p-1)/p of the array), so the bytes on
the wire are predictable on any world size.

Shards of a dimension of size n over p ranks are ``np.array_split`` cuts: rank r holds
``shard_sizes(n, p)[r]`` rows/columns, sizes differing by at most one, so n need not
divide by p.
"""
from __future__ import annotations

ALGORITHM = "ring"


def shard_sizes(n, world_size):
    """Sizes of the ``np.array_split`` cut of n items over ``world_size`` ranks."""
    n, p = int(n), int(world_size)
    return [n // p + (1 if r < n % p else 0) for r in range(p)]


def shard_range(n, world_size, rank):
    """``(start, stop)`` of rank's shard of n items (``np.array_split`` cuts)."""
    sizes = shard_sizes(n, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def check_shardable(n, world_size, what):
    """Every rank needs at least one row/column: raise ValueError naming the sizes otherwise."""
    if int(n) < int(world_size):
        raise ValueError(f"cannot split {what}={n} over {world_size} tensor-parallel ranks: every rank "
                         f"needs at least one; use {what} >= {world_size} or fewer ranks")


class _TPOp:
    """A communication operator of a tensor-parallel group, counting what it sends."""

    name = "op"

    def __init__(self, comm):
        self.comm = comm
        self.calls = {"forward": 0, "backward": 0}
        self.nbytes = {"forward": 0, "backward": 0}

    def _all_reduce(self, x, phase):
        self.calls[phase] += 1
        self.nbytes[phase] += int(x.nbytes)
        if self.comm.world_size == 1:
            return x
        return self.comm.all_reduce(x, op="sum", algorithm=ALGORITHM)

    def __repr__(self):
        return f"{type(self).__name__}(world_size={self.comm.world_size}, calls={self.calls})"


class CopyToTP(_TPOp):
    """f: identity forward, all-reduce backward (Megatron-LM's ``f``, picotron's
    ``CopyToModelParallelRegion``). Placed before a column-parallel layer: every rank
    reads the whole X, so dX is the SUM of the ranks' partial dX."""

    name = "f"

    def forward(self, x):
        return x

    def backward(self, dout):  # (batch, in_features), partial on each rank
        return self._all_reduce(dout, "backward")


class ReduceFromTP(_TPOp):
    """g: all-reduce forward, identity backward (Megatron-LM's ``g``, picotron's
    ``ReduceFromModelParallelRegion``). After a row-parallel layer: each rank holds a
    partial sum ``Y_r B_r`` of ``Z = Y B``; the all-reduce completes it. dZ is the same
    on every rank, and is each partial sum's gradient too."""

    name = "g"

    def forward(self, x):  # (batch, out_features), partial on each rank
        return self._all_reduce(x, "forward")

    def backward(self, dout):
        return dout


class GatherFromTP(_TPOp):
    """All-gather the column shards along the last axis forward; backward keeps this
    rank's columns of the gradient (picotron's ``GatherFromModelParallelRegion``).
    Used by ``ColumnParallelLinear(gather_output=True)``: the naive way."""

    name = "gather"

    def __init__(self, comm, out_features):
        super().__init__(comm)
        self.out_features = int(out_features)
        self.start, self.stop = shard_range(out_features, comm.world_size, comm.rank)

    def forward(self, x):  # (batch, my columns) -> (batch, out_features)
        self.calls["forward"] += 1
        self.nbytes["forward"] += int(x.nbytes)
        if self.comm.world_size == 1:
            return x
        xp = self.comm.xp
        # all_gather concatenates along axis 0: send the transpose, rows = my columns
        full = self.comm.all_gather(xp.ascontiguousarray(x.T), algorithm=ALGORITHM)  # (out_features, batch)
        return xp.ascontiguousarray(full.T)

    def backward(self, dout):  # (batch, out_features) -> (batch, my columns)
        return dout[:, self.start:self.stop]


def count_calls(ops):
    """Total ``{"forward": n, "backward": n}`` collective calls of a list of operators."""
    total = {"forward": 0, "backward": 0}
    for op in ops:
        for k in total:
            total[k] += op.calls[k]
    return total


def count_nbytes(ops):
    """Total ``{"forward": bytes, "backward": bytes}`` handed to collectives by ``ops``."""
    total = {"forward": 0, "backward": 0}
    for op in ops:
        for k in total:
            total[k] += op.nbytes[k]
    return total


def ring_all_reduce_wire_bytes(nbytes, world_size):
    """Bytes all ranks together put on the wire for one ring all-reduce of ``nbytes``:
    2(p-1) * nbytes (each rank sends 2(p-1)/p of the array; Patarasuk and Yuan 2009)."""
    return 2 * (int(world_size) - 1) * int(nbytes)


__all__ = ["CopyToTP", "ReduceFromTP", "GatherFromTP", "shard_sizes", "shard_range", "check_shardable",
           "count_calls", "count_nbytes", "ring_all_reduce_wire_bytes", "ALGORITHM"]
