"""The ``sim`` engine: a deterministic discrete-event simulation of ``world_size``
ranks in one process.

Each rank is a greenlet (a micro-thread); only one runs at a time. The scheduler
always resumes the rank whose virtual clock is earliest (ties: lowest rank), and a
rank yields before every action others could see (a send) if another rank is behind
it in virtual time. So messages are posted in virtual-time order, the order of events
follows the modelled times and not the operating system, and the same program gives
the same trace and the same bits on every run.

Time passes only through messages (``NetworkModel``: alpha + nbytes * beta per
message, one outgoing and one incoming port per rank), reductions (gamma per byte)
and declared compute (``comm.compute``). Never through the wall clock.

When no rank can run and some still wait, that is a deadlock: the scheduler knows what
every rank waits for and says so (``DeadlockError``).
"""
from __future__ import annotations

import gc
import heapq
import time

import greenlet
import numpy as np

from ._sim_fail import Alarm, combined_failure
from ._sim_mail import Mailboxes, said
from ._sim_state import _DIE, _RESUME, BLOCKED, DEAD, DONE, READY, RUNNING, _Killed, _RankState
from .errors import CommError, DeadlockError, RankFailure, TimeoutError
from .network import NetworkModel
from .trace import Span, Trace


class Simulator(Mailboxes):
    def __init__(self, world_size, network=None, xp=np, record_trace=True):
        self.world_size = world_size
        if network is not None and not isinstance(network, NetworkModel):
            raise CommError(
                f"network={network!r}: the sim engine takes a NetworkModel, not a name; "
                "there are no named networks. Use NetworkModel() (flat, 10 us, 1 GB/s), "
                "NetworkModel(alpha=..., beta=...) or NetworkModel.cluster(ranks_per_node) "
                "(from mlscale.comm.network import NetworkModel), or None for the default")
        self.net = network if network is not None else NetworkModel()
        self.net.validate(world_size)
        self.xp = xp
        self.trace = Trace(world_size)
        self.record = record_trace
        self.heap = []
        self.ranks = [
            _RankState(r, self.net.speed(r), self.net.failures.get(r)) for r in range(world_size)
        ]
        self.entities = list(self.ranks)  # ranks, then background tasks (comm streams)
        self.members = [[R] for R in self.ranks]  # entities of each rank
        self.egress = [0.0] * world_size  # time each rank's outgoing port is free
        self.ingress = [0.0] * world_size  # time its incoming port is free
        self.boxes = {}
        self.box_limit = 4 * world_size + 1024  # then drained boxes are swept (_sweep_boxes)
        # above this many boxes, one is forgotten as soon as it drains (below, it is kept for
        # the next message on its key: two ranks talking again and again make no new boxes)
        self.box_keep = 2 * world_size + 64
        self.by_dst = None  # (ctx, dst, tag) -> {src: box}, for recv_any: built on its first use
        self.boards = {}  # (ctx, seq) -> {local rank: (sig, extra)}
        self.agreed = {}  # (ctx, seq) -> [extras], [readers left]
        self.now = 0.0
        self.current = None
        self.hub = None
        self.ndropped = {}
        self.ndead = 0  # ranks dead so far
        self.pool = {}
        self.direct = False  # ranks resume each other (_switch_out); set by _run

    # ------------------------------------------------------------------ the scheduler
    # Python's cyclic GC, at its default thresholds, walks the whole heap (every rank's
    # greenlet, mailbox and trace entry) again and again in a run of 10,000 ranks: a
    # third of the run. During a run it collects the young generation less often (every
    # 100,000 allocations: most of a message's objects are freed by then; at 20,000 the
    # collector still took a tenth of a 16,384-rank all-reduce) and the old ones far less
    # often; the thresholds are restored afterwards.
    GC_THRESHOLD = (100000, 100, 1000)

    def run(self, fn, args, timeout=None):
        old = gc.get_threshold()
        gc.set_threshold(*(max(a, b) for a, b in zip(old, self.GC_THRESHOLD)))
        try:
            with Alarm(self, timeout):  # SIGALRM in the main thread: a spinning or sleeping rank is stopped too
                return self._run(fn, args, timeout)
        finally:
            gc.set_threshold(*old)

    def _run(self, fn, args, timeout=None):
        from ._sim_comm import SimComm

        self.hub = greenlet.getcurrent()
        world = list(range(self.world_size))
        for R in self.ranks:
            comm = SimComm(self, R.rank, self.world_size, ctx=(), group=world)
            R.glet = greenlet.greenlet(self._body(R, comm, fn, args), parent=self.hub)
            heapq.heappush(self.heap, (0.0, _RESUME, R.eid, R.token))
            if R.death is not None:
                heapq.heappush(self.heap, (float(R.death), _DIE, R.rank, 0))
        heap = self.heap
        deadline = None if timeout is None else time.perf_counter() + timeout
        # without a wall-clock limit a rank that waits resumes the next one itself (_switch_out)
        self.direct = deadline is None
        n = 0
        failures = []  # (rank, virtual time) of ranks that raised
        until = float("inf")  # after a failure, ranks behind it in virtual time still run
        while heap:
            if heap[0][0] > until:
                break
            n += 1
            if deadline is not None and not n & 255 and time.perf_counter() > deadline:
                err = TimeoutError(f"the simulation ran past launch(timeout={timeout}) wall-clock seconds at "
                                   f"virtual t={self.now:.6g} s; what each rank was doing:\n"
                                   + "\n".join(self._deadlock_message(self.entities).split("\n")[1:-1]))
                self._abort()
                raise err
            t, kind, r, tok = heapq.heappop(heap)
            R = self.entities[r]
            if kind == _DIE:
                if R.state in (READY, BLOCKED):
                    self.now = t
                    self._die(R, t)
                    for E in self.members[R.rank]:
                        if E.started and not E.glet.dead:
                            E.glet.throw(_Killed())
                continue
            if tok != R.token or R.state not in (READY, BLOCKED):
                continue
            self.now = t
            R.state = RUNNING
            R.started = True
            self.current = R
            R.glet.switch()
            # back here when the entity running now (maybe not R: ranks resume each other)
            # has finished, or waits and left the next step to the scheduler
            R = self.current
            self.current = None
            if R.exc is not None:
                self.direct = False  # from now on every step is the scheduler's (it checks `until`)
                failures.append((R, R.clock))
                # past the wall-clock limit: stop now; else let ranks behind it in virtual time run
                late = getattr(self, "timed_out", False) or deadline is not None and time.perf_counter() > deadline
                until = -1.0 if late else min(until, R.clock)
        if failures:
            self._abort()
            raise combined_failure(failures, self.world_size)
        blocked = [R for R in self.entities if R.state == BLOCKED]
        if blocked:
            err = DeadlockError(self._deadlock_message(blocked))
            self._abort()
            raise err
        self._abort()  # tasks of ranks that died
        return [R.result for R in self.ranks]

    def _body(self, R, comm, fn, args):
        def body():
            try:
                R.result = fn(comm, *args)
                R.state = DONE
            except _Killed:
                if R.state != DEAD:
                    R.state = DONE
            except BaseException as e:  # noqa: BLE001 - handed to launch's caller
                R.exc = e
                R.state = DONE

        return body

    def _abort(self):
        for R in self.entities:
            if R.glet is not None and R.started and not R.glet.dead:
                R.state = DEAD if R.state == DEAD else DONE
                R.glet.throw(_Killed())

    def _deadlock_message(self, blocked):
        lines = [f"deadlock at t={self.now:.6g} s: every live rank waits and no message can arrive"]
        for R in self.entities:
            if R.state == BLOCKED:
                lines.append(f"  {R.name} (t={R.clock:.6g} s) waits in {said(R.waiting)}")
            elif R.eid >= self.world_size:
                continue
            elif R.state == DEAD:
                lines.append(f"  {R.name} died at t={R.died_at:.6g} s")
            else:
                lines.append(f"  {R.name} finished at t={R.clock:.6g} s")
        for (s, d), n in sorted(self.ndropped.items()):
            lines.append(f"  the network model dropped {n} message(s) on link {s}->{d}")
        lines.append(
            "Fix: make every send meet a matching recv (same src/dst/tag) and every rank call the "
            "same collectives in the same order; in a ring use sendrecv or isend/irecv so no "
            "rank waits for a neighbour that waits for it."
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ rank-side primitives
    def _switch_out(self, R):
        """R waits: run the next entity. Without a wall-clock limit and before any
        failure, R takes the scheduler's next step itself and switches straight to the
        entity at the top of the heap (one greenlet switch instead of two, the same
        steps in the same order as the scheduler's loop); a death at the top of the
        heap, an entity not started yet, or an empty heap is left to the scheduler."""
        if self.direct:
            heap, entities = self.heap, self.entities
            while heap:
                t, kind, r, tok = heap[0]
                if kind != _RESUME:
                    break
                E = entities[r]
                if tok != E.token or (E.state != READY and E.state != BLOCKED):
                    heapq.heappop(heap)
                    continue  # a stale entry (the scheduler skips it too)
                if not E.started:  # a greenlet's first start is the scheduler's: started from a
                    break  # rank it would inherit that rank's recursion depth, and so on down a chain
                heapq.heappop(heap)
                self.now = t
                E.state = RUNNING
                E.started = True
                self.current = E
                if E is not R:
                    E.glet.switch()  # back when some entity resumes R
                if R.state == DEAD:
                    raise _Killed()
                return
        self.hub.switch()
        if R.state == DEAD:
            raise _Killed()

    def _yield(self, R):
        """Let ranks that are behind in virtual time run first."""
        R.token += 1
        R.state = READY
        heapq.heappush(self.heap, (R.clock, _RESUME, R.eid, R.token))
        self._switch_out(R)

    def _sync(self, R):
        h = self.heap
        if h:
            t0, k0, e0, _ = h[0]
            c = R.clock
            if t0 < c or (t0 == c and (k0 < _RESUME or (k0 == _RESUME and e0 < R.eid))):
                self._yield(R)

    def _block(self, R, what, deadline=None):
        R.token += 1
        R.state = BLOCKED
        R.waiting = what
        if deadline is not None:
            heapq.heappush(self.heap, (deadline, _RESUME, R.eid, R.token))
        self._switch_out(R)
        R.waiting = ""

    def _wake(self, R, key):
        if R.state == BLOCKED:
            R.token += 1
            R.state = READY
            heapq.heappush(self.heap, (max(key, R.clock), _RESUME, R.eid, R.token))

    def _wake_all_blocked(self, t):
        for Q in self.entities:
            self._wake(Q, t)

    def advance(self, R, t):
        """Move rank R's clock to t (never back); it dies if t passes its death time."""
        if R.death is not None and t >= R.death:
            R.clock = max(R.clock, float(R.death))
            self._die(R, R.clock)
            raise _Killed()
        if t > R.clock:
            R.clock = t

    def _die(self, R, t):
        self.ndead += 1  # (a rank dies once: callers only kill live ranks)
        for E in self.members[R.rank]:  # a rank dies with its background tasks
            if E.state != DONE:
                E.state = DEAD
                E.died_at = t
        R = self.ranks[R.rank]
        R.state = DEAD
        R.died_at = t
        R.clock = t
        self._wake_all_blocked(t)  # whoever waits on it learns it died

    def compute(self, R, seconds, label="compute"):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number)) \
                or not np.isfinite(seconds) or seconds < 0:
            raise CommError(
                f"rank {R.rank}: compute() got {seconds!r} seconds of work; it must be a finite "
                "number >= 0 (seconds=, or flops= >= 0 at NetworkModel.flops FLOP/s)")
        start = R.clock
        self.advance(R, start + seconds / R.speed)
        if self.record and seconds > 0:
            self.trace.spans.append(Span(R.rank, start, R.clock, label))

    # ------------------------------------------------------------------ background tasks
    def spawn(self, owner, stream, fn, args):
        """Run ``fn(stream, *args)`` as a new entity of ``owner``'s rank, starting at the
        owner's clock, after the stream's previous task (a stream runs tasks in order,
        like a CUDA stream: NCCL's overlap of communication with compute)."""
        eid = len(self.entities)
        T = _RankState(owner.rank, owner.speed, None, eid=eid, name=f"rank {owner.rank} comm stream task {eid}")
        T.clock = owner.clock
        prev = stream._last_task
        stream._last_task = T

        def body():
            try:
                while prev is not None and prev.state not in (DONE, DEAD):
                    prev.waiters.append(T)
                    self._block(T, f"its stream's previous task ({prev.name})")
                if prev is not None:
                    self.advance(T, prev.clock)
                stream._R = T
                T.result = fn(stream, *args)
                T.state = DONE
            except _Killed:
                if T.state != DEAD:
                    T.state = DONE
            except BaseException as e:  # noqa: BLE001 - ends the run, like a rank's error
                T.exc = e
                T.state = DONE
            for W in T.waiters:
                self._wake(W, T.clock)

        T.glet = greenlet.greenlet(body, parent=self.hub)
        self.entities.append(T)
        self.members[owner.rank].append(T)
        heapq.heappush(self.heap, (T.clock, _RESUME, eid, T.token))
        return T

    def join(self, R, T):
        """Entity R waits for background task T to finish; its clock moves to T's end."""
        while T.state not in (DONE, DEAD):
            T.waiters.append(R)
            self._block(R, f"wait() for {T.name}")
        if T.state == DEAD:
            raise RankFailure(f"{T.name} died at t={T.died_at:.6g} s", failed_rank=T.rank)
        self.advance(R, T.clock)
        return T.result

    # ------------------------------------------------------------------ agreement (no modelled cost)
    def agree(self, comm, sig, extra):
        """The cross-rank check of a collective's arguments (and the exchange of ``extra``).

        With no ``extra`` to hand back (all_reduce, broadcast, ...), a rank does not wait
        for the others: it leaves its signature on the collective's board and goes on into
        the algorithm, and whichever rank comes later compares against it (as before, the
        later one reports a mismatch, before it sends anything). No message of a rank that
        disagrees ever moves, so nothing wrong is computed; what changes is only that the
        ranks that came first wait in the algorithm's first receive instead of at a barrier
        (a deadlock report still says who has not called the collective: ``_doing``).
        With ``extra`` (all_gather's counts, split's colours) every rank needs every
        other's, so it waits until all have come."""
        key = (comm.ctx, comm._coll_seq)
        if extra is None:
            board = self.boards.get(key)
            if board is None:
                if comm.world_size > 1:
                    self.boards[key] = {comm.rank: (sig, None)}
                return None
            for r, (s, _) in board.items():
                if s != sig:
                    raise CommError(_mismatch_message(comm, r, s, sig))
                break
            board[comm.rank] = (sig, None)
            if len(board) == comm.world_size:
                del self.boards[key]
            return None
        R = comm._R
        board = self.boards.setdefault(key, {})
        for r, (s, _) in board.items():
            if s != sig:
                raise CommError(_mismatch_message(comm, r, s, sig))
            break
        board[comm.rank] = (sig, extra)
        if len(board) == comm.world_size:
            self.agreed[key] = [[board[r][1] for r in range(comm.world_size)], comm.world_size]
            del self.boards[key]
            for g in comm.group:
                for E in self.members[g]:
                    self._wake(E, E.clock)
        while key not in self.agreed:
            board = self.boards[key]
            if self.ndead:  # only scan the group when some rank has died (O(p) once per death)
                dead = [g for g in comm.group if self.ranks[g].state == DEAD]
                if dead:
                    raise RankFailure(
                        f"rank {comm.rank} (global rank {comm.group[comm.rank]}) waits in {sig[0]} "
                        f"(collective #{comm._coll_seq + 1}) for global rank(s) {dead}, which died",
                        failed_rank=dead[0],
                    )
            # the list of missing ranks is built only if a deadlock report needs it
            self._block(R, _Missing(comm, board, sig[0], comm._coll_seq + 1))
        entry = self.agreed[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.agreed[key]
        return entry[0]


class _Missing:
    """What a rank waits for in a collective, formatted only when asked (a deadlock
    report): building the list of missing ranks for every waiting rank would cost
    O(p) each, O(p^2) per collective."""

    __slots__ = ("comm", "board", "name", "seq")

    def __init__(self, comm, board, name, seq):
        self.comm, self.board, self.name, self.seq = comm, board, name, seq

    def __str__(self):
        from ._sim_comm import _not_called

        return f"{self.name} (collective #{self.seq}), {_not_called(self.comm, self.board)}"


def _mismatch_message(comm, other, theirs, mine):
    names = ("collective", "shape", "dtype", "op", "algorithm", "root")
    sub = list(comm.group) != list(range(len(comm.group)))  # a split() communicator

    def who(r):
        return f"rank {r} (global rank {comm.group[r]})" if sub else f"rank {r}"

    diffs = [
        f"{n}: {who(other)} passed {a!r}, {who(comm.rank)} passed {b!r}"
        for n, a, b in zip(names, theirs, mine)
        if a != b
    ]
    where = f"a sub-communicator of global ranks {list(comm.group)}" if sub else f"{comm.world_size} ranks"
    return (
        f"collective #{comm._coll_seq + 1} on {where}: ranks disagree ("
        + "; ".join(diffs)
        + "). Every rank must call the same collective, in the same order, with the same "
        "shape, dtype, op, algorithm and root."
    )




def __getattr__(name):  # SimComm lives in _sim_comm; keep mlscale.comm.sim.SimComm working
    if name == "SimComm":
        from ._sim_comm import SimComm

        return SimComm
    raise AttributeError(name)
