"""Messages in the sim engine: mailboxes, eager and rendezvous sends, the ports.

A message from src to dst leaves when both src's outgoing port and dst's incoming port
are free and takes ``alpha + nbytes * beta`` (``NetworkModel``). Up to the eager limit
a send returns once its data is on the wire; above it, the data moves only once the
receiver has posted the matching receive (MPI's rendezvous protocol).
"""
import heapq

import numpy as np

from ._sim_state import _RESUME, BLOCKED, DEAD, DONE, READY
from .errors import CommError, DeadlockError, RankFailure, TimeoutError
from .network import NetworkModel
from .trace import Message

_new = tuple.__new__  # Message(...) without the Python frame of a NamedTuple's __new__


_NONE_WAITING = {}  # shared and never written: see _Box.waiting


def said(what):
    """What a rank waits in: the text, or the function that makes it (made only when a
    report or an error needs it, not every time a rank waits)."""
    return what() if callable(what) else str(what)


class _Box:
    """FIFO of messages on one (context, src, dst, tag): message k matches receive k."""

    __slots__ = ("msgs", "nsent", "nposted", "waiting", "posted_at")

    def __init__(self):
        self.msgs = {}  # k -> (arrival time, payload)
        self.nsent = 0
        self.nposted = 0
        self.waiting = _NONE_WAITING  # k -> _Rendezvous: sent above the eager limit, no receive
        # posted yet (a dict of its own only once the box has had one: most never do)
        self.posted_at = {}  # k -> time receive k was posted, while its message has not come


class _Rendezvous:
    """A send above the eager limit: the data moves only once the receiver has posted
    the matching receive (MPI's rendezvous protocol), and the send completes after."""

    __slots__ = ("R", "ctx", "dst", "tag", "payload", "label", "sent_at", "end")

    def __init__(self, R, ctx, dst, tag, payload, label):
        self.R, self.ctx, self.dst, self.tag, self.payload, self.label = R, ctx, dst, tag, payload, label
        self.sent_at = R.clock
        self.end = None


class Mailboxes:
    """The message half of :class:`~mlscale.comm.sim.Simulator` (a mixin)."""

    def _box(self, ctx, src, dst, tag):
        key = (ctx, src, dst, tag)
        box = self.boxes.get(key)
        if box is None:
            if len(self.boxes) >= self.box_limit:
                self._sweep_boxes()
            box = self.boxes[key] = _Box()
            if self.by_dst is not None:
                self.by_dst.setdefault((ctx, dst, tag), {})[src] = box
        return box

    def _sweep_boxes(self):
        """Forget the boxes whose every message was received: the next message on such
        a key starts a new box at 0 (matching is relative), so memory holds the
        conversations in flight, not every (src, dst) pair a run ever used (a recursive
        doubling at 16,384 ranks uses 229,376). Done when the table doubles: amortized O(1)."""
        for key, box in list(self.boxes.items()):
            if box.nsent == box.nposted and not box.msgs and not box.posted_at and not box.waiting:
                ctx, src, dst, tag = key
                del self.boxes[key]
                if self.by_dst is not None:
                    peers = self.by_dst[(ctx, dst, tag)]
                    del peers[src]
                    if not peers:
                        del self.by_dst[(ctx, dst, tag)]
        self.box_limit = max(2 * len(self.boxes), 4 * self.world_size + 1024)

    def post(self, R, ctx, dst, tag, buf, label, given=False):
        """Put a message on the wire from R to global rank dst; return its arrival time."""
        h = self.heap
        if h:  # (Simulator._sync, inlined: this runs once per message)
            t0, k0, e0, _ = h[0]
            c = R.clock
            if t0 < c or (t0 == c and (k0 < _RESUME or (k0 == _RESUME and e0 < R.eid))):
                self._yield(R)  # someone is behind R in virtual time: it goes first
        D = self.ranks[dst]
        if D.state == DEAD:
            g = "global rank" if ctx else "rank"  # (in a split, name the global ranks as such)
            raise RankFailure(
                f"{g} {R.rank} sent to {g} {dst} ({_on_tag(tag, label)}), which died at t={D.died_at:.6g} s",
                failed_rank=dst,
            )
        nbytes = buf.nbytes
        limit = self.net.eager_limit
        if limit is not None and nbytes > limit:
            return self._post_rendezvous(R, ctx, dst, tag, buf, label, given)
        if not given:
            buf = buf.copy() if nbytes < self.POOL_MIN and (buf.__class__ is np.ndarray or not _shape_only(buf)) \
                else self._snapshot(buf)
        return self._transfer(R, R.clock, ctx, dst, tag, buf, label)

    def _transfer(self, R, ready, ctx, dst, tag, payload, label, idx=None):
        """Move payload from R's rank to dst, starting no earlier than ``ready``, in the
        order of the ports; deliver it to the box as message ``idx`` (the next one if
        None). Returns the arrival time."""
        nbytes = payload.nbytes
        src, net = R.rank, self.net
        start = ready  # max(ready, the ports' free times), without the call (once per message)
        e = self.egress[src]
        if e > start:
            start = e
        e = self.ingress[dst]
        if e > start:
            start = e
        if net.links is None and type(net) is NetworkModel:  # (message_time, inlined)
            end = start + (net.alpha + nbytes * net.beta)
        else:
            end = start + net.message_time(src, dst, nbytes)
        if R.death is not None and end > R.death:  # dies mid-transfer: the message is lost
            self.advance(R, float(R.death))
        self.egress[src] = self.ingress[dst] = end
        dropped = False
        if net.drops:
            drop_at = net.drops.get((src, dst))
            dropped = drop_at is not None and start >= drop_at
        if self.record:
            self.trace.messages.append(_new(Message, (start, end, src, dst, nbytes, tag, label, dropped)))
        if dropped:
            self.ndropped[(src, dst)] = self.ndropped.get((src, dst), 0) + 1
            return end
        box = self.boxes.get((ctx, src, dst, tag)) or self._box(ctx, src, dst, tag)
        if idx is None:
            idx = box.nsent
            box.nsent += 1
        box.msgs[idx] = (end, payload)
        if box.posted_at:
            box.posted_at.pop(idx, None)
        for E in self.members[dst]:
            if E.state == BLOCKED:  # (Simulator._wake, inlined)
                E.token += 1
                E.state = READY
                heapq.heappush(self.heap, (end if end > E.clock else E.clock, _RESUME, E.eid, E.token))
        return end

    def _post_rendezvous(self, R, ctx, dst, tag, buf, label, given):
        box = self._box(ctx, R.rank, dst, tag)
        rdv = _Rendezvous(R, ctx, dst, tag, buf if given else self._snapshot(buf), label)
        idx = box.nsent
        box.nsent += 1
        if idx in box.posted_at:  # the receive is already there
            self._match(box, idx, rdv, box.posted_at[idx])
        else:
            if box.waiting is _NONE_WAITING:
                box.waiting = {}
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
        return self.post_recv_box(R, ctx, src, tag)[1]

    def post_recv_box(self, R, ctx, src, tag):
        """Post receive number k on (ctx, src -> R, tag); returns (its box, k)."""
        box = self.boxes.get((ctx, src, R.rank, tag)) or self._box(ctx, src, R.rank, tag)
        idx = box.nposted
        box.nposted += 1
        rdv = box.waiting.get(idx)
        if rdv is not None:
            self._match(box, idx, rdv, R.clock)
        elif idx not in box.msgs:
            box.posted_at[idx] = R.clock
        return box, idx

    def complete_send(self, R, handle, what):
        """A blocking send or isend().wait(): R's clock moves to the end of the transfer.
        ``what``: a string, or a function giving one (said only if the send must wait)."""
        if handle.__class__ is not float and isinstance(handle, _Rendezvous):
            if not isinstance(what, str):
                what = what()
            while handle.end is None:
                if self.ranks[handle.dst].state == DEAD:
                    raise RankFailure(f"rank {R.rank}: {what}: rank {handle.dst} died", failed_rank=handle.dst)
                self._block(R, f"{what}: {handle.payload.nbytes} B is above the eager limit "
                               f"({self.net.eager_limit} B), so it waits for rank {handle.dst} to post "
                               "a matching recv (rendezvous)")
            handle = handle.end
        if R.death is None:  # (advance, inlined)
            if handle > R.clock:
                R.clock = handle
        else:
            self.advance(R, handle)

    # A message is a snapshot of the sender's buffer (so the sender may reuse it at
    # once). Large snapshots come from a pool of recycled buffers: fresh memory costs a
    # page fault per page, which would dominate a simulated all-reduce of 64 MiB.
    POOL_MIN = 1 << 18
    POOL_MAX_PER_SIZE = 32

    def _snapshot(self, buf):
        nb = buf.nbytes
        if _shape_only(buf):  # mlscale.meta: the message carries shape, dtype and nbytes, no data
            return buf.wire()
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

    def take(self, R, ctx, src, tag, idx, out, deadline, what, box=None):
        """Complete receive number ``idx`` on (ctx, src -> R, tag) (in ``box`` if the
        caller kept it from post_recv_box). ``what``: a string or a function giving
        one, said only if the receive has to wait."""
        if box is None:
            box = self._box(ctx, src, R.rank, tag)
        while True:
            item = box.msgs.get(idx)
            if item is not None and (deadline is None or item[0] <= deadline):
                msgs = box.msgs
                del msgs[idx]
                if not msgs and len(self.boxes) > self.box_keep and box.nsent == box.nposted \
                        and not box.posted_at and not box.waiting and self.by_dst is None:
                    # drained, and many boxes: forget it now (as _sweep_boxes would later; the
                    # next message on this key starts a new box at 0), so the table holds what
                    # is in flight
                    key = (ctx, src, R.rank, tag)
                    if self.boxes.get(key) is box:
                        del self.boxes[key]
                t = item[0]
                if R.death is None:  # (advance, inlined)
                    if t > R.clock:
                        R.clock = t
                else:
                    self.advance(R, t)
                payload = item[1]
                if out is None and payload.__class__ is np.ndarray:  # (_deliver would return it)
                    return payload
                return self._deliver(payload, out, R.rank, src, tag)
            S = self.ranks[src]
            if item is None and S.state == DEAD:
                self.advance(R, S.died_at)
                g = "global rank" if ctx else "rank"
                raise RankFailure(
                    f"{g} {R.rank} waited in {said(what)}: {g} {src} died at t={S.died_at:.6g} s "
                    "before sending it", failed_rank=src,
                )
            if deadline is not None and (self.now >= deadline or (item is not None)):
                self.advance(R, deadline)
                if box.nposted == idx + 1 and item is None:
                    box.nposted = idx  # cancel the receive, as MPI_Cancel would
                    box.posted_at.pop(idx, None)
                raise TimeoutError(f"rank {R.rank}: {said(what)} timed out at t={deadline:.6g} s")
            self._block(R, what, deadline)  # (the text is made only if a report needs it)

    def take_any(self, R, ctx, tag, out, deadline):
        """Receive the earliest-arriving message from any source (MPI_ANY_SOURCE)."""
        what = f"recv_any(tag={tag})"
        while True:
            best = None
            if self.by_dst is None:  # the first receive from any source: index the boxes by receiver
                self.by_dst = {}
                for (c, src_, dst_, t), b in self.boxes.items():
                    self.by_dst.setdefault((c, dst_, t), {})[src_] = b
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
            # (with a timeout it waits for it: a rank that finished later in virtual time was
            # still running then)
            if deadline is None and all(Q.state in (DEAD, DONE) for Q in self.ranks if Q.rank != R.rank):
                raise DeadlockError(f"rank {R.rank} waits in {what} but every other rank has finished or died")
            self._block(R, what, deadline)

    def _deliver(self, payload, out, rank, src, tag):
        if _shape_only(payload):  # lands in a buffer of the receiver's device (mlscale.meta.Meta)
            payload = payload.arrive(getattr(self, "meta_devices", {}).get(rank))
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


def _shape_only(buf):
    return getattr(buf, "_shape_only", False) is True


def _on_tag(tag, label):
    """The tag of a message, or the collective it belongs to (the collectives' internal tag)."""
    from ..collectives._p2p import MAX_TAG

    if tag < MAX_TAG:
        return f"tag {tag}"
    name, _, algo = label.partition("/")
    return f"in {name} (algorithm={algo!r})" if algo else f"in {name or 'a collective'}"
