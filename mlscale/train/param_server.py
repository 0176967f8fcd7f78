"""Parameter servers (Li et al., OSDI 2014): ranks 0..k-1 hold the parameters, sharded
k ways; the other ranks are workers that push gradients and pull parameters.

Consistency, from strict to loose:

- ``mode="sync"``: each step the servers wait for every worker's gradient, average,
  update, and send the new parameters back (bulk synchronous).
- ``mode="ssp", staleness=s``: stale synchronous parallel (Ho et al., NeurIPS 2013). A
  server applies each gradient as it arrives; a worker that has finished c steps may
  start its next one only once the slowest worker has finished c - s. s = 0 is
  lockstep; a straggler then holds everyone back.
- ``mode="async"``: no bound (Hogwild-style asynchronous SGD): fast workers never wait,
  and their gradients are applied to parameters that have moved on since they read them
  (the staleness, recorded for every applied gradient).

Every gradient and parameter crosses a server's one link: with p workers a single
server moves 2 p n bytes per step, k shards divide that by k. The ring all-reduce has
no such bottleneck: notebook 04 shows both on the trace.

The SSP admission rule is :func:`ssp_may_proceed` (``admit=`` swaps in another, as
notebook 04's exercise does). Each server records, per applied gradient, who sent it,
at which of its clocks, which parameter version it read and which update applied it
(``history.applied``); :func:`clock_lag` turns that into Ho et al.'s guarantee, checkable.
"""
from __future__ import annotations

import numpy as np

from ..collectives._p2p import bounds
from .common import History, Stepper

HDR, GRAD, REPLY, PARAMS = 11, 12, 13, 14  # tags


def ssp_may_proceed(clock, slowest, staleness):
    """Stale synchronous parallel admission (Ho et al., NeurIPS 2013): may a worker that
    has finished ``clock`` steps start its next one, when the slowest worker has finished
    ``slowest``? Yes iff ``slowest >= clock - staleness``: the worker then reads
    parameters holding every worker's updates up to clock ``clock - staleness - 1``.
    ``staleness=0`` is bulk synchronous (lockstep); ``None`` is asynchronous (always)."""
    return staleness is None or slowest >= clock - staleness


def clock_lag(history):
    """Per applied gradient (in order), how many clocks its worker was ahead of what it
    could see: a gradient computed at clock c on parameter version v has lag
    ``c - m``, where m is the fewest gradients any worker had applied in version v. SSP
    with staleness s guarantees lag <= s (Ho et al. 2013); async has no bound.
    ``history`` is a server's :class:`History` (``history.applied``)."""
    applied = getattr(history, "applied", None)
    if applied is None:
        raise ValueError("clock_lag needs a parameter server's History (the one a server rank returns), "
                         "with .applied; a worker's History has none")
    if not applied:
        return []
    workers = sorted({a[0] for a in applied})
    last = max(a[3] for a in applied)
    counts = np.zeros((last + 1, len(workers)), dtype=np.int64)  # counts[v, i]: worker i's gradients in version v
    col = {w: i for i, w in enumerate(workers)}
    for w, _, _, after in applied:
        counts[after:, col[w]] += 1
    slowest = counts.min(axis=1)  # (versions,)
    return [c - int(slowest[v]) for _, c, v, _ in applied]


class ParameterServer:
    def __init__(self, mode="sync", num_servers=1, staleness=None, admit=None, on_update=None):
        """``admit(clock, slowest, staleness) -> bool``: the SSP rule (default
        :func:`ssp_may_proceed`); ``on_update(updates, clock)``: called on every server
        rank after each update (e.g. to record the loss of the model it holds)."""
        if mode not in ("sync", "async", "ssp"):
            raise ValueError(f"ParameterServer mode {mode!r}: use 'sync', 'ssp' or 'async'")
        if mode == "ssp" and (staleness is None or staleness < 0):
            raise ValueError("mode='ssp' needs staleness=s >= 0 (how many steps a worker may run ahead)")
        if int(num_servers) != num_servers or num_servers < 1:
            raise ValueError(f"num_servers must be >= 1, got {num_servers!r}")
        self.mode = mode
        self.num_servers = int(num_servers)
        if admit is not None and not callable(admit):
            raise TypeError(f"admit must be a function (clock, slowest, staleness) -> bool, got {admit!r}")
        if on_update is not None and not callable(on_update):
            raise TypeError(f"on_update must be a function (updates, clock), got {on_update!r}")
        self.staleness = None if mode == "async" else (0 if mode == "sync" else int(staleness))
        self.admit = admit or ssp_may_proceed
        self.on_update = on_update
        self.versions = None

    @property
    def name(self):
        extra = f", s={self.staleness}" if self.mode == "ssp" else ""
        return f"parameter server ({self.mode}{extra}, {self.num_servers} server{'s' * (self.num_servers > 1)})"

    def workers(self, comm):
        if comm.world_size <= self.num_servers:
            raise ValueError(
                f"a parameter server with {self.num_servers} server rank(s) needs at least one more rank "
                f"for a worker; world_size is {comm.world_size}"
            )
        return list(range(self.num_servers, comm.world_size))

    def _cut(self, model):
        return bounds(model.num_params, self.num_servers)

    # ---------------------------------------------------------------- worker side
    def worker_steps(self, steps):
        return steps if self.mode == "sync" else None  # async: until the servers say stop

    def step(self, comm, model, optimizer, stepper: Stepper, micro_batches):
        """Push this step's gradient shards, pull fresh parameter shards. Returns the loss,
        or None when the servers say training is over."""
        cut = self._cut(model)
        if self.versions is None:
            self.versions = [0] * self.num_servers
        loss = 0.0
        for i, (xb, yb) in enumerate(micro_batches):
            loss += stepper.loss_and_grad(xb, yb, zero_grad=(i == 0))
        if len(micro_batches) > 1:
            model.grads *= 1.0 / len(micro_batches)
        reqs = []
        with comm.label("ps/push"):
            for j in range(self.num_servers):
                reqs.append(comm.isend(np.array([self.versions[j]], dtype=np.int64), j, tag=HDR))
                reqs.append(comm.isend(model.grads[cut[j]:cut[j + 1]], j, tag=GRAD))
        for r in reqs:
            r.wait()
        # post every receive first: the servers' replies may then arrive in any order
        # and at once (a blocking recv per server would make server 1 wait for server 0)
        replies = [comm.irecv(j, tag=REPLY) for j in range(self.num_servers)]
        shards = [comm.irecv(j, tag=PARAMS, out=model.params[cut[j]:cut[j + 1]]) for j in range(self.num_servers)]
        stop = False
        for j in range(self.num_servers):
            flag, version = replies[j].wait().tolist()
            shards[j].wait()
            self.versions[j] = version
            stop = stop or not flag
        return None if stop else loss / len(micro_batches)

    # ---------------------------------------------------------------- server side
    def serve(self, comm, model, make_optimizer, steps, workers):
        """Run server ``comm.rank``: ``steps`` rounds (sync) or ``steps * len(workers)``
        applied gradients (ssp, async). Returns the server's History."""
        j = comm.rank
        cut = self._cut(model)
        params = model.params[cut[j]:cut[j + 1]]
        opt = make_optimizer(params)
        hist = History(role="server")
        hist.applied = []  # (worker, its clock, version read, update that applied it) per gradient
        if self.mode == "sync":
            self._serve_sync(comm, params, opt, steps, workers, hist)
        else:
            self._serve_async(comm, params, opt, steps * len(workers), workers, hist)
        self._flush()
        hist.clocks.append(comm.clock)
        return hist

    def _update(self, comm, opt, grad, hist):
        comm.compute(flops=8 * grad.size, label="update")  # an optimizer pass over the shard
        opt.step(grad)
        hist.updates += 1
        if self.on_update is not None:
            self.on_update(hist.updates, comm.clock)

    def _reply(self, comm, w, params, version, go=True):
        """Tell worker w whether to go on (go) and send it this server's parameter shard."""
        # non-blocking: a server must never wait on one worker while others queue
        # (with several servers and MPI's rendezvous sends that would deadlock)
        self._outbox = [r for r in getattr(self, "_outbox", []) if not r.test()]
        with comm.label("ps/pull"):
            self._outbox.append(comm.isend(np.array([int(go), version], dtype=np.int64), w, tag=REPLY))
            # the parameters go too when stopping: workers end with the servers' latest
            self._outbox.append(comm.isend(params.copy(), w, tag=PARAMS))  # a copy: params change next update

    def _flush(self):
        for r in getattr(self, "_outbox", []):
            r.wait()
        self._outbox = []

    def _serve_sync(self, comm, params, opt, steps, workers, hist):
        for t in range(steps):
            total = None
            for w in workers:  # every worker's shard queues on this server's link
                hdr = comm.recv(w, tag=HDR)
                g = comm.recv(w, tag=GRAD)
                total = g.astype(params.dtype, copy=True) if total is None else total + g
                hist.staleness.append(0)
                hist.applied.append((w, t, int(hdr[0]), t + 1))
            total *= 1.0 / len(workers)
            self._update(comm, opt, total, hist)
            for w in workers:
                self._reply(comm, w, params, hist.updates)
            hist.clocks.append(comm.clock)

    def _serve_async(self, comm, params, opt, budget, workers, hist):
        done = {w: 0 for w in workers}  # gradients applied per worker (its clock)
        deferred = []  # workers whose next step waits for the slowest (SSP)
        stopped = set()
        s = self.staleness
        while len(stopped) < len(workers):
            w, hdr = comm.recv_any(tag=HDR)
            g = comm.recv(w, tag=GRAD)
            if hist.updates >= budget:
                self._reply(comm, w, params, hist.updates, go=False)
                stopped.add(w)
                continue
            hist.staleness.append(hist.updates - int(hdr[0]))
            hist.staleness_by_worker.setdefault(w, []).append(hist.staleness[-1])
            hist.applied.append((w, done[w], int(hdr[0]), hist.updates + 1))
            self._update(comm, opt, g, hist)
            hist.clocks.append(comm.clock)
            done[w] += 1
            deferred.append(w)
            still = []
            for v in deferred:  # SSP: v may start step done[v] once the slowest has done done[v] - s
                if hist.updates >= budget:
                    self._reply(comm, v, params, hist.updates, go=False)
                    stopped.add(v)
                elif self._admit(done[v], min(done.values()), s):
                    self._reply(comm, v, params, hist.updates)
                else:
                    still.append(v)
            deferred = still

    def _admit(self, clock, slowest, s):
        ok = self.admit(clock, slowest, s)
        if not isinstance(ok, (bool, np.bool_)):
            raise TypeError(f"the SSP rule admit({clock}, {slowest}, {s}) returned {ok!r}: return True or False")
        return bool(ok)
