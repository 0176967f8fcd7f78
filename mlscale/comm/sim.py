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

import heapq

import greenlet
import numpy as np

from .base import Communicator, Request
from .errors import CommError, DeadlockError, RankFailure, TimeoutError
from .network import NetworkModel
from .trace import Message, Span, Trace

READY, RUNNING, BLOCKED, DONE, DEAD = "ready", "running", "blocked", "done", "dead"
_DIE, _RESUME = 0, 1  # heap priorities: a death at time t happens before resumes at t


class _Killed(BaseException):
    """Unwinds a rank's greenlet when it dies or the run is aborted (not an Exception,
    so a learner's ``except Exception`` does not swallow it)."""


class _RankState:
    __slots__ = (
        "rank", "eid", "name", "glet", "clock", "state", "waiting", "token", "result", "exc",
        "death", "died_at", "speed", "started", "waiters",
    )

    def __init__(self, rank, speed, death, eid=None, name=None):
        self.rank = rank  # the rank whose ports and identity this entity uses
        self.eid = rank if eid is None else eid  # its index in Simulator.entities
        self.name = name or f"rank {rank}"
        self.waiters = []  # entities waiting for this one to finish (background tasks)
        self.clock = 0.0
        self.state = READY
        self.waiting = ""
        self.token = 0
        self.result = None
        self.exc = None
        self.death = death
        self.died_at = None
        self.speed = speed
        self.started = False
        self.glet = None


class _Box:
    """FIFO of messages on one (context, src, dst, tag): message k matches receive k."""

    __slots__ = ("msgs", "nsent", "nposted", "waiting", "posted_at")

    def __init__(self):
        self.msgs = {}  # k -> (arrival time, payload)
        self.nsent = 0
        self.nposted = 0
        self.waiting = {}  # k -> _Rendezvous: sent above the eager limit, no receive posted yet
        self.posted_at = {}  # k -> time receive k was posted, while its message has not come


class _Rendezvous:
    """A send above the eager limit: the data moves only once the receiver has posted
    the matching receive (MPI's rendezvous protocol), and the send completes after."""

    __slots__ = ("R", "ctx", "dst", "tag", "payload", "label", "sent_at", "end")

    def __init__(self, R, ctx, dst, tag, payload, label):
        self.R, self.ctx, self.dst, self.tag, self.payload, self.label = R, ctx, dst, tag, payload, label
        self.sent_at = R.clock
        self.end = None


class Simulator:
    def __init__(self, world_size, network=None, xp=np, record_trace=True):
        self.world_size = world_size
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
        self.by_dst = {}  # (ctx, dst, tag) -> {src: box}, for recv_any
        self.boards = {}  # (ctx, seq) -> {local rank: (sig, extra)}
        self.agreed = {}  # (ctx, seq) -> [extras], [readers left]
        self.now = 0.0
        self.current = None
        self.hub = None
        self.ndropped = {}
        self.pool = {}

    # ------------------------------------------------------------------ the scheduler
    def run(self, fn, args):
        self.hub = greenlet.getcurrent()
        world = list(range(self.world_size))
        for R in self.ranks:
            comm = SimComm(self, R.rank, self.world_size, ctx=(), group=world)
            R.glet = greenlet.greenlet(self._body(R, comm, fn, args), parent=self.hub)
            heapq.heappush(self.heap, (0.0, _RESUME, R.eid, R.token))
            if R.death is not None:
                heapq.heappush(self.heap, (float(R.death), _DIE, R.rank, 0))
        heap = self.heap
        while heap:
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
            self.current = None
            if R.exc is not None:
                self._abort()
                raise _with_rank(R.exc, R.rank, self.world_size)
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
                lines.append(f"  {R.name} (t={R.clock:.6g} s) waits in {R.waiting}")
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
        if h and (h[0][0], h[0][1], h[0][2]) < (R.clock, _RESUME, R.eid):
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
        if seconds < 0:
            raise CommError(f"rank {R.rank}: compute(seconds={seconds}) must be >= 0")
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

    # ------------------------------------------------------------------ messages
    def _box(self, ctx, src, dst, tag):
        key = (ctx, src, dst, tag)
        box = self.boxes.get(key)
        if box is None:
            box = self.boxes[key] = _Box()
            self.by_dst.setdefault((ctx, dst, tag), {})[src] = box
        return box

    def post(self, R, ctx, dst, tag, buf, label, given=False):
        """Put a message on the wire from R to global rank dst; return its arrival time."""
        self._sync(R)
        D = self.ranks[dst]
        if D.state == DEAD:
            raise RankFailure(
                f"rank {R.rank} sent to rank {dst} (tag {tag}), which died at t={D.died_at:.6g} s",
                failed_rank=dst,
            )
        nbytes = buf.nbytes
        limit = self.net.eager_limit
        if limit is not None and nbytes > limit:
            return self._post_rendezvous(R, ctx, dst, tag, buf, label, given)
        return self._transfer(R, R.clock, ctx, dst, tag, buf if given else self._snapshot(buf), label)

    def _transfer(self, R, ready, ctx, dst, tag, payload, label, idx=None):
        """Move payload from R's rank to dst, starting no earlier than ``ready``, in the
        order of the ports; deliver it to the box as message ``idx`` (the next one if
        None). Returns the arrival time."""
        nbytes = payload.nbytes
        start = max(ready, self.egress[R.rank], self.ingress[dst])
        end = start + self.net.message_time(R.rank, dst, nbytes)
        if R.death is not None and end > R.death:  # dies mid-transfer: the message is lost
            self.advance(R, float(R.death))
        self.egress[R.rank] = self.ingress[dst] = end
        drop_at = self.net.drops.get((R.rank, dst)) if self.net.drops else None
        dropped = drop_at is not None and start >= drop_at
        if self.record:
            self.trace.messages.append(Message(start, end, R.rank, dst, nbytes, tag, label, dropped))
        if dropped:
            self.ndropped[(R.rank, dst)] = self.ndropped.get((R.rank, dst), 0) + 1
            return end
        box = self._box(ctx, R.rank, dst, tag)
        if idx is None:
            idx = box.nsent
            box.nsent += 1
        box.msgs[idx] = (end, payload)
        box.posted_at.pop(idx, None)
        for E in self.members[dst]:
            if E.state == BLOCKED:
                self._wake(E, end)
        return end

    def _post_rendezvous(self, R, ctx, dst, tag, buf, label, given):
        box = self._box(ctx, R.rank, dst, tag)
        rdv = _Rendezvous(R, ctx, dst, tag, buf if given else self._snapshot(buf), label)
        idx = box.nsent
        box.nsent += 1
        if idx in box.posted_at:  # the receive is already there
            self._match(box, idx, rdv, box.posted_at[idx])
        else:
            box.waiting[idx] = rdv
        return rdv

    def _match(self, box, idx, rdv, posted):
        """Receive ``idx`` meets its rendezvous send: the transfer can start."""
        box.waiting.pop(idx, None)
        ready = max(rdv.sent_at, posted)
        rdv.end = self._transfer(rdv.R, ready, rdv.ctx, rdv.dst, rdv.tag, rdv.payload, rdv.label, idx=idx)
        self._wake(rdv.R, rdv.end)

    def post_recv(self, R, ctx, src, tag):
        """Post receive number k on (ctx, src -> R, tag); returns k."""
        box = self._box(ctx, src, R.rank, tag)
        idx = box.nposted
        box.nposted += 1
        rdv = box.waiting.get(idx)
        if rdv is not None:
            self._match(box, idx, rdv, R.clock)
        elif idx not in box.msgs:
            box.posted_at[idx] = R.clock
        return idx

    def complete_send(self, R, handle, what):
        """A blocking send or isend().wait(): R's clock moves to the end of the transfer."""
        if isinstance(handle, _Rendezvous):
            while handle.end is None:
                if self.ranks[handle.dst].state == DEAD:
                    raise RankFailure(f"rank {R.rank}: {what}: rank {handle.dst} died", failed_rank=handle.dst)
                self._block(R, f"{what}: {handle.payload.nbytes} B is above the eager limit "
                               f"({self.net.eager_limit} B), so it waits for rank {handle.dst} to post "
                               "a matching recv (rendezvous)")
            handle = handle.end
        self.advance(R, handle)

    # A message is a snapshot of the sender's buffer (so the sender may reuse it at
    # once). Large snapshots come from a pool of recycled buffers: fresh memory costs a
    # page fault per page, which would dominate a simulated all-reduce of 64 MiB.
    POOL_MIN = 1 << 18
    POOL_MAX_PER_SIZE = 32

    def _snapshot(self, buf):
        nb = buf.nbytes
        if nb < self.POOL_MIN or self.xp is not np:
            return buf.copy()
        free = self.pool.get(nb)
        raw = free.pop() if free else np.empty(nb, dtype=np.uint8)
        snap = raw.view(buf.dtype).reshape(buf.shape)
        np.copyto(snap, buf)
        return snap

    def recycle(self, payload):
        """Give a received snapshot back to the pool (only for buffers nobody else holds)."""
        raw = payload.base
        if raw is not None and raw.dtype == np.uint8 and raw.ndim == 1 and raw.nbytes >= self.POOL_MIN:
            free = self.pool.setdefault(raw.nbytes, [])
            if len(free) < self.POOL_MAX_PER_SIZE:
                free.append(raw)

    def take(self, R, ctx, src, tag, idx, out, deadline, what):
        """Complete receive number ``idx`` on (ctx, src -> R, tag)."""
        box = self._box(ctx, src, R.rank, tag)
        while True:
            item = box.msgs.get(idx)
            if item is not None and (deadline is None or item[0] <= deadline):
                del box.msgs[idx]
                self.advance(R, item[0])
                return self._deliver(item[1], out, R.rank, src, tag)
            S = self.ranks[src]
            if item is None and S.state == DEAD:
                self.advance(R, S.died_at)
                raise RankFailure(
                    f"rank {R.rank} waited in {what}: rank {src} died at t={S.died_at:.6g} s "
                    "before sending it", failed_rank=src,
                )
            if deadline is not None and (self.now >= deadline or (item is not None)):
                self.advance(R, deadline)
                if box.nposted == idx + 1 and item is None:
                    box.nposted = idx  # cancel the receive, as MPI_Cancel would
                    box.posted_at.pop(idx, None)
                raise TimeoutError(f"rank {R.rank}: {what} timed out at t={deadline:.6g} s")
            self._block(R, what, deadline)

    def take_any(self, R, ctx, tag, out, deadline):
        """Receive the earliest-arriving message from any source (MPI_ANY_SOURCE)."""
        what = f"recv_any(tag={tag})"
        while True:
            best = None
            for src, box in self.by_dst.get((ctx, R.rank, tag), {}).items():
                item = box.msgs.get(box.nposted)
                if item is None and box.nposted in box.waiting:  # a rendezvous send: match it now
                    t = max(box.waiting[box.nposted].sent_at, R.clock)
                    if best is None or (t, src) < best[:2]:
                        best = (t, src, box)
                elif item is not None and (best is None or (item[0], src) < best[:2]):
                    best = (item[0], src, box)
            if best is not None and (deadline is None or best[0] <= deadline):
                h = self.heap
                key = max(best[0], R.clock)
                if h and (h[0][0], h[0][1], h[0][2]) < (key, _RESUME, R.eid):
                    R.token += 1  # others may still send something that arrives earlier
                    R.state = READY
                    heapq.heappush(h, (key, _RESUME, R.eid, R.token))
                    self._switch_out(R)
                    continue
                arrival, src, box = best
                idx = self.post_recv(R, ctx, src, tag)
                arrival, payload = box.msgs.pop(idx)
                self.advance(R, arrival)
                return src, self._deliver(payload, out, R.rank, src, tag)
            if deadline is not None and self.now >= deadline:
                self.advance(R, deadline)
                raise TimeoutError(f"rank {R.rank}: {what} timed out at t={deadline:.6g} s")
            if all(Q.state in (DEAD, DONE) for Q in self.ranks if Q.rank != R.rank):
                raise DeadlockError(f"rank {R.rank} waits in {what} but every other rank has finished or died")
            self._block(R, what, deadline)

    def _deliver(self, payload, out, rank, src, tag):
        if out is None:
            return payload
        if out.shape != payload.shape or out.dtype != payload.dtype:
            raise CommError(
                f"rank {rank}: recv(src={src}, tag={tag}) got {payload.shape} {payload.dtype} but out= is "
                f"{out.shape} {out.dtype}; pass an out= of the sender's shape and dtype"
            )
        out[...] = payload
        self.recycle(payload)
        return out

    # ------------------------------------------------------------------ agreement (no modelled cost)
    def agree(self, comm, sig, extra):
        R = comm._R
        key = (comm.ctx, comm._coll_seq)
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
            dead = [comm.group.index(g) for g in comm.group if self.ranks[g].state == DEAD]
            if dead:
                raise RankFailure(
                    f"rank {comm.rank} waits in {sig[0]} (collective #{comm._coll_seq}) for rank(s) "
                    f"{dead}, which died", failed_rank=dead[0],
                )
            missing = [r for r in range(comm.world_size) if r not in board]
            self._block(R, f"{sig[0]} (collective #{comm._coll_seq}), waiting for rank(s) {missing} to call it")
        entry = self.agreed[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.agreed[key]
        return entry[0]


def _mismatch_message(comm, other, theirs, mine):
    names = ("collective", "shape", "dtype", "op", "algorithm", "root")
    diffs = [
        f"{n}: rank {other} passed {a!r}, rank {comm.rank} passed {b!r}"
        for n, a, b in zip(names, theirs, mine)
        if a != b
    ]
    return (
        f"collective #{comm._coll_seq} on {comm.world_size} ranks: ranks disagree ("
        + "; ".join(diffs)
        + "). Every rank must call the same collective, in the same order, with the same "
        "shape, dtype, op, algorithm and root."
    )




def _with_rank(exc, rank, world_size):
    note = f"(raised on rank {rank} of {world_size}, sim engine)"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    exc.rank = rank
    return exc


class _SendRequest(Request):
    __slots__ = ("sim", "R", "end")

    def __init__(self, sim, R, end):
        self.sim, self.R, self.end = sim, R, end

    def wait(self):
        self.sim.complete_send(self.R, self.end, "isend().wait()")

    def test(self):
        end = self.end.end if isinstance(self.end, _Rendezvous) else self.end
        return end is not None and self.R.clock >= end


class _RecvRequest(Request):
    __slots__ = ("comm", "src", "tag", "idx", "out", "done", "value")

    def __init__(self, comm, src, tag, idx, out):
        self.comm, self.src, self.tag, self.idx, self.out = comm, src, tag, idx, out
        self.done, self.value = False, None

    def wait(self):
        if not self.done:
            c = self.comm
            self.value = c.sim.take(
                c._R, c.ctx, c.group[self.src], self.tag, self.idx, self.out, None,
                f"irecv(src={self.src}, tag={self.tag}).wait()",
            )
            self.done = True
        return self.value

    def test(self):
        c = self.comm
        item = c.sim._box(c.ctx, c.group[self.src], c._R.rank, self.tag).msgs.get(self.idx)
        return self.done or (item is not None and item[0] <= c._R.clock)


class _TaskRequest(Request):
    __slots__ = ("sim", "R", "T")

    def __init__(self, sim, R, T):
        self.sim, self.R, self.T = sim, R, T

    def wait(self):
        return self.sim.join(self.R, self.T)

    def test(self):
        return self.T.state == DONE and self.T.clock <= self.R.clock


class SimComm(Communicator):
    """A rank's view of the simulated world (or of a ``split`` sub-group of it)."""

    backend = "sim"
    prefers_out = False

    def __init__(self, sim, rank, world_size, ctx, group):
        super().__init__(rank, world_size, sim.xp)
        self.sim = sim
        self.ctx = ctx
        self.group = group  # local rank -> global rank
        self._R = sim.ranks[group[rank]]
        self._stream = None
        self._last_task = None

    @property
    def clock(self):
        """This rank's virtual time, in seconds."""
        return self._R.clock

    @property
    def network(self):
        return self.sim.net

    def compute(self, seconds=None, flops=None, label="compute"):
        """Spend ``seconds`` (or ``flops`` at the modelled FLOP/s) of virtual compute,
        slowed by this rank's ``NetworkModel.speeds`` factor."""
        if seconds is None and flops is None:
            raise CommError("compute() needs seconds= or flops=")
        s = (seconds or 0.0) + (flops or 0.0) / self.sim.net.flops
        self.sim.compute(self._R, s, label)

    def _charge_reduce(self, nbytes):
        g = self.sim.net.gamma
        if g:
            self.sim.compute(self._R, nbytes * g, "reduce")

    def _send(self, buf, dst, tag):
        end = self.sim.post(self._R, self.ctx, self.group[dst], tag, buf, self._label)
        self.sim.complete_send(self._R, end, f"send(dst={dst}, tag={tag})")

    def _isend(self, buf, dst, tag):
        end = self.sim.post(self._R, self.ctx, self.group[dst], tag, buf, self._label)
        return _SendRequest(self.sim, self._R, end)

    def start(self, fn, *args):
        """Run ``fn(stream_comm, *args)`` in the background on this rank's communication
        stream and return a Request; ``wait()`` returns fn's result. Tasks on a stream
        run one after another, from the virtual time they were started, while this rank
        goes on computing: that is how DDP overlaps the all-reduce of one bucket of
        gradients with the backward pass of the layers below it. Every rank must start
        the same collectives in the same order."""
        if self._stream is None:
            self._stream = SimComm(self.sim, self.rank, self.world_size, self.ctx + ("stream",), self.group)
        T = self.sim.spawn(self._R, self._stream, fn, args)
        return _TaskRequest(self.sim, self._R, T)

    def _isend_given(self, buf, dst, tag):
        end = self.sim.post(self._R, self.ctx, self.group[dst], tag, buf, self._label, given=True)
        return _SendRequest(self.sim, self._R, end)

    def _post_recv(self, src, tag):
        return self.sim.post_recv(self._R, self.ctx, self.group[src], tag)

    def _recv(self, src, tag, out, timeout=None):
        idx = self._post_recv(src, tag)
        deadline = None if timeout is None else self._R.clock + timeout
        return self.sim.take(
            self._R, self.ctx, self.group[src], tag, idx, out, deadline, f"recv(src={src}, tag={tag})"
        )

    def recv(self, src, tag=0, out=None, timeout=None, _internal=False):
        """Blocking receive; ``timeout`` in virtual seconds raises ``TimeoutError``."""
        src = self._check_peer(src, "src")
        tag = self._check_tag(tag, _internal)
        return self._recv(src, tag, out, timeout)

    def _irecv(self, src, tag, out):
        return _RecvRequest(self, src, tag, self._post_recv(src, tag), out)

    def recv_any(self, tag=0, out=None, timeout=None):
        """Receive the first message to arrive from any rank: returns ``(src, array)``."""
        tag = self._check_tag(tag)
        deadline = None if timeout is None else self._R.clock + timeout
        gsrc, arr = self.sim.take_any(self._R, self.ctx, tag, out, deadline)
        return self.group.index(gsrc), arr

    def _agree(self, signature, extra=None):
        return self.sim.agree(self, signature, extra)

    def _release(self, arr):
        self.sim.recycle(arr)

    def barrier(self):
        from ..collectives.rooted import barrier_dissemination

        with self.label("barrier"):
            barrier_dissemination(self)

    def split(self, color, key=None):
        """Sub-communicators (MPI_Comm_split): ranks with the same ``color`` form a
        group ordered by ``(key, rank)``; ``color=None`` gets None back."""
        seq = self._coll_seq
        extras = self._agree(("split", None, None, None, None, None), (color, self.rank if key is None else key))
        self._coll_seq += 1
        if color is None:
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(extras) if c == color)
        group = [self.group[r] for _, r in members]
        new_rank = [r for _, r in members].index(self.rank)
        return SimComm(self.sim, new_rank, len(group), ctx=self.ctx + ((seq, color),), group=group)
