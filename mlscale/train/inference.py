"""Distributed inference: shard the inputs over ranks, predict locally, gather."""
from __future__ import annotations

import numpy as np


def predict(comm, model, X, batch_size=4096):
    """Every rank predicts a contiguous shard of X (np.array_split cuts); the predictions
    are all-gathered in order, so every rank returns what one process would."""
    lo, hi = _cut(len(X), comm.world_size, comm.rank)
    local = model.predict(X[lo:hi], batch_size=batch_size) if hi > lo else model.xp.zeros(0, np.int64)
    return comm.all_gather(local.astype(np.int64))


def accuracy(comm, model, X, y):
    """Accuracy over the whole of (X, y), computed by shards and reduced."""
    lo, hi = _cut(len(X), comm.world_size, comm.rank)
    correct = float((model.predict(X[lo:hi]) == model.xp.asarray(y[lo:hi])).sum()) if hi > lo else 0.0
    total = comm.all_reduce(np.array([correct, hi - lo], dtype=np.float64))
    return float(total[0] / total[1])


def _cut(n, p, r):
    q, rem = divmod(n, p)
    lo = r * q + min(r, rem)
    return lo, lo + q + (1 if r < rem else 0)
