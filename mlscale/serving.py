"""Serving a model from several workers: a frontend, replicas, and dynamic batching.

Rank ``frontend`` (0) receives requests as they arrive, queues them, and hands batches
to idle replicas (every other rank); each replica runs the model on its batch and
sends the predictions back. Batching trades latency for throughput: a GPU takes
almost as long for 8 inputs as for 1, so waiting a little to fill a batch multiplies
what one replica can serve. The dispatcher follows Triton's dynamic batcher and
Clipper's (Crankshaw et al., NSDI 2017): send a batch when ``max_batch`` requests wait
or when the oldest has waited ``max_wait`` seconds, whichever comes first.

    def program(comm):
        model = nn.MLP([64, 32, 10], seed=0)
        return serving.serve(comm, model, X, serving.poisson_arrivals(rate=2000, n=500),
                             max_batch=8, max_wait=1e-3, batch_time=(2e-3, 1e-4))
    stats = ms.launch(program, 4)[0]           # the frontend's ServeStats
    stats.percentile(99), stats.throughput

Times are the engine's clock: virtual seconds on ``sim`` (the replica's service time is
``batch_time``, declared with ``comm.compute``, so runs are exact and reproducible),
wall-clock seconds on MPI (the model's real run time counts and ``batch_time`` adds to
it). Queueing theory to compare with: one replica serving one request at a time in
``s`` seconds saturates at ``1/s`` requests per second, and latency grows without
bound as the arrival rate approaches it; with batches of ``b`` it saturates at
``b / batch_time(b)``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .comm.errors import CommError, TimeoutError

REQUEST, REPLY = 11, 12  # message tags


def poisson_arrivals(rate, n, seed=0, start=0.0):
    """Arrival times of ``n`` requests at ``rate`` per second on average (exponential gaps)."""
    if not rate > 0:
        raise ValueError(f"poisson_arrivals: rate must be > 0 requests per second, got {rate!r}")
    if int(n) != n or n < 1:
        raise ValueError(f"poisson_arrivals: n must be a whole number >= 1, got {n!r}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=int(n))
    return start + np.cumsum(gaps)


@dataclass
class ServeStats:
    """What the frontend saw: per request (in arrival order) and per batch."""

    arrival: np.ndarray
    dispatched: np.ndarray = None  # when its batch left the frontend
    finished: np.ndarray = None  # when its prediction came back
    replica: np.ndarray = None  # rank that served it
    predictions: np.ndarray = None
    batches: list = field(default_factory=list)  # (replica, start, end, size)

    @property
    def latency(self):
        """Seconds from arrival to prediction, per request."""
        return self.finished - self.arrival

    def percentile(self, q):
        return float(np.percentile(self.latency, q))

    @property
    def throughput(self):
        """Requests served per second, from the first arrival to the last answer."""
        span = self.finished.max() - self.arrival.min()
        return len(self.arrival) / span if span > 0 else float("inf")

    @property
    def mean_batch(self):
        return float(np.mean([b[3] for b in self.batches])) if self.batches else 0.0

    def summary(self):
        return (
            f"{len(self.arrival)} requests, {len(self.batches)} batches (mean size {self.mean_batch:.1f}); "
            f"latency p50 {self.percentile(50) * 1e3:.2f} ms, p99 {self.percentile(99) * 1e3:.2f} ms; "
            f"throughput {self.throughput:.0f} requests/s"
        )


def _service_time(batch_time):
    if batch_time is None:
        return lambda b: 0.0
    if callable(batch_time):
        return batch_time
    fixed, per_item = batch_time
    if fixed < 0 or per_item < 0:
        raise ValueError(f"serve: batch_time=(fixed, per_item) must be >= 0 seconds, got {batch_time!r}")
    return lambda b: fixed + per_item * b


def serve(comm, model, X, arrivals, max_batch=1, max_wait=0.0, batch_time=None, frontend=0):
    """Serve requests ``X[i]`` arriving at ``arrivals[i]`` (seconds, sorted) with every rank
    but ``frontend`` as a replica holding its own ``model``. Returns :class:`ServeStats`
    on the frontend and the number of batches served on each replica.

    max_batch   largest batch a replica runs (1 = no batching)
    max_wait    seconds the oldest queued request may wait for a batch to fill
    batch_time  a replica's modelled service time: ``(fixed, per_item)`` seconds, or a
                function ``batch_size -> seconds`` (None: only the model's own run time)
    """
    p = comm.world_size
    if p < 2:
        raise CommError(
            f"serve needs a frontend and at least one replica: launch 2 or more ranks (got world_size={p})"
        )
    if not 0 <= frontend < p:
        raise ValueError(f"serve: frontend={frontend} is not a rank; use 0..{p - 1}")
    if int(max_batch) != max_batch or max_batch < 1:
        raise ValueError(f"serve: max_batch must be a whole number >= 1, got {max_batch!r}")
    if max_wait < 0:
        raise ValueError(f"serve: max_wait must be >= 0 seconds, got {max_wait!r}")
    arrivals = np.asarray(arrivals, dtype=np.float64)
    if arrivals.ndim != 1 or len(arrivals) != len(X):
        raise ValueError(f"serve: arrivals must be one time per row of X ({len(X)}), got shape {arrivals.shape}")
    if np.any(np.diff(arrivals) < 0):
        raise ValueError("serve: arrivals must be sorted (request i arrives no later than request i+1)")
    service = _service_time(batch_time)
    if comm.rank == frontend:
        return _frontend(comm, X, arrivals, int(max_batch), float(max_wait), frontend)
    return _replica(comm, model, X, service, frontend)


def _replica(comm, model, X, service, frontend):
    served = 0
    while True:
        ids = comm.recv(frontend, tag=REQUEST)
        if ids.size == 0:  # the frontend's stop signal
            return served
        preds = model.predict(X[ids])
        comm.compute(seconds=service(len(ids)), label="serve")
        comm.send(np.asarray(preds, dtype=np.int64), frontend, tag=REPLY)
        served += 1


def _frontend(comm, X, arrivals, max_batch, max_wait, me):
    n = len(arrivals)
    t0 = comm.clock  # request times are relative to when serving starts
    stats = ServeStats(arrival=arrivals.copy(), dispatched=np.full(n, np.nan), finished=np.full(n, np.nan),
                       replica=np.full(n, -1), predictions=np.full(n, -1, dtype=np.int64))
    idle = deque(r for r in range(comm.world_size) if r != me)
    busy = {}  # replica -> (ids, start)
    queue = deque()
    nxt = done = 0
    while done < n:
        now = comm.clock - t0
        while nxt < n and arrivals[nxt] <= now:  # admit what has arrived
            queue.append(nxt)
            nxt += 1
        # dispatch full batches, or the oldest request's batch once it has waited max_wait,
        # or everything once no more requests will come
        while idle and queue and (len(queue) >= max_batch or now >= arrivals[queue[0]] + max_wait or nxt == n):
            ids = np.array([queue.popleft() for _ in range(min(max_batch, len(queue)))], dtype=np.int64)
            r = idle.popleft()
            stats.dispatched[ids] = comm.clock - t0  # the batch leaves now
            busy[r] = (ids, comm.clock - t0)
            comm.send(ids, r, tag=REQUEST)
        wake = []  # the next moment something changes besides a reply
        if nxt < n:
            wake.append(arrivals[nxt])
        if idle and queue:
            wake.append(arrivals[queue[0]] + max_wait)
        timeout = max(min(wake) - (comm.clock - t0), 0.0) if wake else None
        if not busy and timeout is None:  # pragma: no cover - nothing queued, nothing coming, not done
            raise RuntimeError("serve: the frontend has nothing to wait for")
        try:  # a reply, or the timeout at the next arrival / batch deadline
            src, preds = comm.recv_any(tag=REPLY, timeout=timeout)
        except TimeoutError:
            continue
        ids, start = busy.pop(src)
        stats.finished[ids] = comm.clock - t0
        stats.replica[ids] = src
        stats.predictions[ids] = preds
        stats.batches.append((src, start, comm.clock - t0, len(ids)))
        idle.append(src)
        done += len(ids)
    for r in range(comm.world_size):
        if r != me:
            comm.send(np.zeros(0, np.int64), r, tag=REQUEST)
    return stats
