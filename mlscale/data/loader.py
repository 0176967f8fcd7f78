"""Feeding data to ranks: a rank's shard, deterministic mini-batches, splitting a global batch.

Two ways to spread data parallel work, both deterministic in (seed, epoch), so every
engine and every run sees the same batches:

- each rank keeps a shard (``shard``, as PyTorch's ``DistributedSampler``: rank r takes
  every world_size-th example from r) and draws its own local batches (``batches``);
- or every rank draws the same global batch and keeps its slice (``split_batch``), so
  world_size ranks with local batch B/world_size compute exactly the gradient of one
  process with batch B (the check that data parallelism is right).

Works for NumPy and CuPy arrays (indices are made on the host, then moved).
"""
import numpy as np


def _check_rank(func, rank, world_size):
    if int(world_size) != world_size or world_size < 1:
        raise ValueError(f"{func}: world_size must be a positive integer, got {world_size!r}")
    if int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"{func}: rank must be in [0, {world_size}), got {rank!r}")


def _check_pair(func, X, y):
    if y is not None and len(X) != len(y):
        raise ValueError(f"{func}: X has {len(X)} rows but y has {len(y)} labels; they must match")


def _take(a, idx):
    if type(a).__module__.startswith("cupy"):
        import cupy

        idx = cupy.asarray(idx)
    return a[idx]


def shard(X, y, rank, world_size, even=True):
    """Rank ``rank``'s share of (X, y): examples rank, rank + world_size, rank + 2 world_size, ...

    even=True (the default) leaves out the last ``n % world_size`` examples so every rank
    holds exactly ``n // world_size`` and synchronous ranks take the same number of steps
    (a rank with one more batch would wait for an all-reduce nobody joins). Shuffle first
    if the data are sorted. Returns ``(X_rank, y_rank)`` (y may be None).
    """
    _check_rank("shard", rank, world_size)
    _check_pair("shard", X, y)
    n = len(X)
    stop = n - n % world_size if even else n
    if stop == 0 or (not even and rank >= n):
        raise ValueError(f"shard: {n} examples cannot give rank {rank} of {world_size} any data; "
                         f"use world_size <= {n}")
    sl = slice(rank, stop, world_size)
    return X[sl], (None if y is None else y[sl])


def num_batches(n, batch_size, drop_last=False):
    """How many batches ``batches`` yields for n examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(X, y, batch_size, seed=0, epoch=0, shuffle=True, drop_last=False):
    """Mini-batches ``(X_batch, y_batch)`` over one epoch, in an order fixed by (seed, epoch).

    The permutation comes from ``numpy.random.default_rng([seed, epoch])``: the same seed
    and epoch give the same batches on every rank and run, a new epoch a new order
    (PyTorch's ``DistributedSampler.set_epoch``). The last batch is smaller unless
    ``drop_last``. y may be None (then batches are ``(X_batch, None)``).
    """
    _check_pair("batches", X, y)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    n = len(X)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n) if shuffle else np.arange(n)
    for b in range(num_batches(n, batch_size, drop_last)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        yield _take(X, idx), (None if y is None else _take(y, idx))


def split_batch(batch, rank, world_size):
    """Rank ``rank``'s contiguous slice of a global batch (an array or a tuple such as (X, y)).

    The global batch must split evenly: with 10 examples over 3 ranks the ranks would
    average gradients of different sizes, so that is an error, not a silent remainder.
    """
    _check_rank("split_batch", rank, world_size)
    arrays = batch if isinstance(batch, (tuple, list)) else (batch,)
    sizes = {len(a) for a in arrays if a is not None}
    if len(sizes) > 1:
        raise ValueError(f"split_batch: the arrays of the batch have different lengths {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    if n % world_size:
        multiple = world_size * max(1, round(n / world_size))
        raise ValueError(f"global batch {n} does not split over {world_size} ranks: use a multiple of "
                         f"{world_size} (e.g. {multiple})")
    local = n // world_size
    sl = slice(rank * local, (rank + 1) * local)
    out = tuple(None if a is None else a[sl] for a in arrays)
    return out if isinstance(batch, (tuple, list)) else out[0]
