"""One training loop for every synchronizer: how often, with whom, and what is
exchanged is the synchronizer's business; the loop feeds batches and records history.

    def program(comm):
        model = MLP([64, 64, 10], seed=0)
        hist = train(comm, model, lambda m: SGD(m, lr=0.1), X, y,
                     sync=DataParallel(bucket_bytes=1 << 16), steps=100, batch_size=64)
        return hist
    ms.launch(program, 4)

At step t every worker takes its equal slice of global batch t (``batch_size`` examples
drawn by ``mlscale.data.batches``), so p ranks of data parallelism compute exactly what
one process computes on the global batch.
"""
from __future__ import annotations

import copy

from ..data import batches, split_batch
from .common import History, Stepper, check_same_model
from .data_parallel import DataParallel


def _global_batches(X, y, batch_size, seed):
    epoch = 0
    while True:
        got = False
        for xb, yb in batches(X, y, batch_size, seed=seed, epoch=epoch, drop_last=True):
            got = True
            yield xb, yb
        if not got:
            raise ValueError(f"batch_size={batch_size} is larger than the data set ({len(X)} examples)")
        epoch += 1


def _optimizer(make_optimizer, target):
    if hasattr(make_optimizer, "step"):
        return make_optimizer
    if not callable(make_optimizer):
        raise TypeError("optimizer must be an optimizer or a function params_or_model -> optimizer")
    return make_optimizer(target)


def train(comm, model, optimizer, X, y, sync=None, steps=100, batch_size=64, accumulate=1,
          seed=0, check=True, progress=False, on_step=None):
    """Train ``model`` on (X, y) with synchronizer ``sync`` (default: DataParallel()).

    optimizer   an optimizer built on ``model``, or a function ``target -> optimizer``
                (needed by ParameterServer: servers build one on their parameter shard)
    steps       optimizer steps per worker (ParameterServer async/ssp: the servers stop
                training after ``steps * workers`` gradients)
    batch_size  the global batch: every step splits it over the workers (and over
                ``accumulate`` micro-batches on each)
    on_step     optional ``f(step, loss)`` called on every worker after each step
    Returns this rank's :class:`History`.
    """
    # each rank gets its own copy: on the sim engine every rank sees the same object,
    # and synchronizers keep per-rank state (step counters, versions)
    sync = copy.deepcopy(sync) if sync is not None else DataParallel()
    if check:
        check_same_model(comm, model)
    workers = sync.workers(comm) if hasattr(sync, "workers") else list(range(comm.world_size))
    if comm.rank not in workers:
        if hasattr(optimizer, "step"):
            raise TypeError("a ParameterServer needs optimizer= as a function params -> optimizer "
                            "(each server builds one on its shard), e.g. lambda p: SGD(p, lr=0.1)")
        return sync.serve(comm, model, optimizer, steps, workers)
    W, w = len(workers), workers.index(comm.rank)
    if batch_size % (W * accumulate):
        raise ValueError(
            f"global batch {batch_size} does not split over {W} workers x {accumulate} micro-batches: "
            f"use a multiple of {W * accumulate}"
        )
    opt = _optimizer(optimizer, model)
    stepper = Stepper(comm, model)
    hist = History()
    limit = sync.worker_steps(steps) if hasattr(sync, "worker_steps") else steps
    stream = _global_batches(X, y, batch_size, seed)
    bar = None
    if progress and comm.rank == workers[0]:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, desc=getattr(sync, "name", "training"), leave=False)
    t = 0
    while limit is None or t < limit:
        xb, yb = next(stream)
        mine = split_batch((xb, yb), w, W)
        micro = [split_batch(mine, i, accumulate) for i in range(accumulate)]
        loss = sync.step(comm, model, opt, stepper, micro)
        if loss is None:
            break
        hist.losses.append(loss)
        hist.clocks.append(comm.clock)
        hist.updates += 1
        if on_step is not None:
            on_step(t, loss)
        if bar is not None:
            bar.update(1)
        t += 1
    if bar is not None:
        bar.close()
    hist.compute_time = stepper.compute_time
    return hist
