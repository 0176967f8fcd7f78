"""A rank's communicator on the sim engine, and its request handles."""
from __future__ import annotations

import numpy as np

from ._sim_mail import _Rendezvous
from ._sim_state import DONE
from ..collectives._p2p import MAX_TAG
from .base import ANY_SOURCE, Communicator, Request
from .errors import CommError


def in_collective(label, seq, what):
    """``what`` (e.g. "recv(src=1)") said as the collective it is part of, for messages
    on the collectives' internal tag: "all_reduce #3 (algorithm='ring'): recv(src=1)"."""
    name, _, algo = label.partition("/")
    if not name:
        return f"a collective's {what}"
    if not algo:  # barrier (not numbered)
        return f"{name}: {what}"
    return f"{name} #{seq} (algorithm={algo!r}): {what}"


def _doing(comm, tag, plain, in_coll):
    """What a rank waits in: ``plain`` (e.g. "recv(src=1, tag=0)") on a user tag; on the
    collectives' tag, the collective and algorithm with ``in_coll`` ("recv(src=1)").
    Called only when a report needs it."""
    if tag < MAX_TAG:
        return plain
    said_ = in_collective(comm._labels[-1] if comm._labels else "", comm._coll_seq, in_coll)
    # the ranks that came first into a collective do not wait for the others at its
    # argument check (Simulator.agree): while some have not called it, say who
    board = comm.sim.boards.get((comm.ctx, comm._coll_seq - 1))
    if board is not None and len(board) < comm.world_size:
        said_ += f", {_not_called(comm, board)}"
    return said_


def _not_called(comm, board):
    """'waiting for rank(s) [2] to call it' (global ranks, and local ones in a split)."""
    missing = [r for r in range(comm.world_size) if r not in board]
    glob = [comm.group[r] for r in missing]
    if glob == missing:
        return f"waiting for rank(s) {missing} to call it"
    return f"waiting for global rank(s) {glob} (local rank(s) {missing} of this sub-communicator) to call it"


def _isend_what(comm, dst, tag):
    """What a rank waits in when its isend above the eager limit has no matching recv:
    "isend().wait()" on a user tag; on the collectives' tag, the collective and
    algorithm ("all_reduce #1 (algorithm='ring'): isend(dst=1).wait()")."""
    return lambda: _doing(comm, tag, "isend().wait()", f"isend(dst={dst}).wait()")


class _SendRequest(Request):
    __slots__ = ("sim", "R", "end", "what")

    def __init__(self, sim, R, end, what="isend().wait()"):
        self.sim, self.R, self.end, self.what = sim, R, end, what

    def wait(self):
        self.sim.complete_send(self.R, self.end, self.what)

    def test(self):
        end = self.end.end if isinstance(self.end, _Rendezvous) else self.end
        return end is not None and self.R.clock >= end


class _RecvRequest(Request):
    __slots__ = ("comm", "src", "tag", "box", "idx", "out", "done", "value")

    def __init__(self, comm, src, tag, box, idx, out):
        self.comm, self.src, self.tag, self.box, self.idx, self.out = comm, src, tag, box, idx, out
        self.done, self.value = False, None

    def _what(self):
        return _doing(self.comm, self.tag, f"irecv(src={self.src}, tag={self.tag}).wait()",
                      f"irecv(src={self.src}).wait()")

    def wait(self):
        if not self.done:
            c = self.comm
            self.value = c.sim.take(c._R, c.ctx, c.group[self.src], self.tag, self.idx, self.out, None,
                                    self._what, self.box)
            self.done = True
        return self.value

    def test(self):
        if self.done:
            return True
        item = self.box.msgs.get(self.idx)
        return item is not None and item[0] <= self.comm._R.clock


class _TaskRequest(Request):
    __slots__ = ("sim", "R", "T", "value", "waited")

    def __init__(self, sim, R, T):
        self.sim, self.R, self.T = sim, R, T
        self.waited = False

    def wait(self):
        if not self.waited:
            self.value = self.sim.join(self.R, self.T)
            self.waited = True
            # the task stays in the simulator's lists: from here its result lives only in this
            # request, so it is freed with it (an FSDP prefetch's gathered layer, say)
            self.T.result = None
        return self.value

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
        for name, v in (("seconds", seconds), ("flops", flops)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                                  or not np.isfinite(v) or v < 0):
                raise CommError(f"rank {self.rank}: compute({name}={v!r}) must be a finite number >= 0")
        s = (seconds or 0.0) + (flops or 0.0) / self.sim.net.flops
        self.sim.compute(self._R, s, label)

    def _charge_reduce(self, nbytes):
        g = self.sim.net.gamma
        if g:
            self.sim.compute(self._R, nbytes * g, "reduce")

    def _send(self, buf, dst, tag):
        R = self._R
        end = self.sim.post(R, self.ctx, self.group[dst], tag, buf, self._labels[-1] if self._labels else "")
        if end.__class__ is float and R.death is None:  # eager: sim.complete_send, inlined
            if end > R.clock:
                R.clock = end
            return
        self.sim.complete_send(R, end, lambda: _doing(self, tag, f"send(dst={dst}, tag={tag})", f"send(dst={dst})"))

    def _isend(self, buf, dst, tag):
        end = self.sim.post(self._R, self.ctx, self.group[dst], tag, buf, self._label)
        return _SendRequest(self.sim, self._R, end, _isend_what(self, dst, tag) if tag >= MAX_TAG else "isend().wait()")

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
        return _SendRequest(self.sim, self._R, end, _isend_what(self, dst, tag) if tag >= MAX_TAG else "isend().wait()")

    def _recv(self, src, tag, out, timeout=None):
        sim, R, ctx, gsrc = self.sim, self._R, self.ctx, self.group[src]
        box, idx = sim.post_recv_box(R, ctx, gsrc, tag)
        deadline = None if timeout is None else R.clock + timeout
        return sim.take(R, ctx, gsrc, tag, idx, out, deadline,
                        lambda: _doing(self, tag, f"recv(src={src}, tag={tag})", f"recv(src={src})"), box)

    def recv(self, src, tag=0, out=None, timeout=None, _internal=False):
        """Blocking receive; ``timeout`` in virtual seconds raises ``TimeoutError``.
        ``src=ANY_SOURCE`` takes the matching message that arrives first in virtual time
        (ties: the lowest rank), as MPI takes the first to arrive, and returns only the
        array, as on MPI; ``recv_any`` also returns the source."""
        if type(src) is not int or not 0 <= src < self.world_size:
            if src == ANY_SOURCE and type(src) is not bool:
                return self.recv_any(tag, out, timeout)[1]
            src = self._check_peer(src, "src")
        if not _internal and (type(tag) is not int or not 0 <= tag < MAX_TAG):
            tag = self._check_tag(tag)
        return self._recv(src, tag, out, timeout)

    def send(self, x, dst, tag=0, _internal=False):
        """Blocking send of array ``x`` to rank ``dst``. ``x`` may be reused on return
        (the checks of Communicator.send, with the common case first: once per message)."""
        if type(dst) is not int or not 0 <= dst < self.world_size:
            dst = self._check_peer(dst, "dst")
        if not _internal and (type(tag) is not int or not 0 <= tag < MAX_TAG):
            tag = self._check_tag(tag)
        buf = self._as_array(x, numeric=False)
        self.nbytes_sent += buf.nbytes
        self.messages_sent += 1
        self._send(buf, dst, tag)

    def _irecv(self, src, tag, out):
        box, idx = self.sim.post_recv_box(self._R, self.ctx, self.group[src], tag)
        return _RecvRequest(self, src, tag, box, idx, out)

    # The collectives' own point-to-point calls (``_internal=True``, on the collective
    # tag, to peers the algorithm computed) take a short path: no argument checks, no
    # request objects; the same calls in the same order as the public path, so the same
    # trace and bits.
    def sendrecv(self, x, dst, src, tag=0, out=None, _internal=False, _give=False):
        if not _internal or not isinstance(x, np.ndarray):
            return super().sendrecv(x, dst, src, tag, out, _internal, _give)
        sim, R, group, ctx = self.sim, self._R, self.group, self.ctx
        gsrc = group[src]
        box, idx = sim.post_recv_box(R, ctx, gsrc, tag)
        buf = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        self.nbytes_sent += buf.nbytes
        self.messages_sent += 1
        end = sim.post(R, ctx, group[dst], tag, buf, self._labels[-1] if self._labels else "", given=_give)
        msgs = box.msgs
        if out is None and R.death is None and end.__class__ is float and idx in msgs:
            # the message is there and the send is eager: sim.take then sim.complete_send,
            # inlined (neither waits)
            t, payload = msgs.pop(idx)
            if not msgs and len(sim.boxes) > sim.box_keep and box.nsent == box.nposted \
                    and not box.posted_at and not box.waiting and sim.by_dst is None:  # (as in take)
                key = (ctx, gsrc, R.rank, tag)
                if sim.boxes.get(key) is box:
                    del sim.boxes[key]
            if t > R.clock:
                R.clock = t
            if payload.__class__ is not np.ndarray:  # (a shape-only array lands on this rank's device)
                payload = sim._deliver(payload, None, R.rank, gsrc, tag)
            if end > R.clock:
                R.clock = end
            return payload
        try:
            return sim.take(R, self.ctx, gsrc, tag, idx, out, None,
                            lambda: _doing(self, tag, f"irecv(src={src}, tag={tag}).wait()",
                                           f"irecv(src={src}).wait()"), box)
        finally:
            sim.complete_send(R, end, "isend().wait()" if end.__class__ is float else _isend_what(self, dst, tag))

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
        extras = self._agree_step(("split", None, None, None, None, None), (color, self.rank if key is None else key))
        if color is None:
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(extras) if c == color)
        group = [self.group[r] for _, r in members]
        new_rank = [r for _, r in members].index(self.rank)
        return SimComm(self.sim, new_rank, len(group), ctx=self.ctx + ((seq, color),), group=group)
