"""The ``mpi`` engine: :class:`MPIComm` over mpi4py, with MPICH from PyPI.

Run a script on 4 processes::

    # mpiexec -n 4 python script.py
    import numpy as np, mlscale as ms
    comm = ms.comm.MPIComm()
    print(comm.rank, comm.all_reduce(np.ones(3), algorithm="ring"))

or, from a notebook or any Python process, ``ms.launch(fn, 4, backend="mpi")``
(:func:`launch_mpi`, in :mod:`mlscale.comm._mpi_launch`).

How a message travels. MPI moves raw bytes; a receiver without ``out=`` must still
learn the shape and dtype. Every message therefore starts with a small header
(``nbytes, seq, ndim, dtype, shape``) sent on the user's tag:

- small arrays (up to ``INLINE_BYTES``) travel *inside* the header message: one MPI
  message, one copy of a few KiB, the latency of a single send;
- larger arrays travel as a second message, straight from the array's own buffer
  (uppercase ``Isend``/``Irecv``, no pickling, no copy) on a private duplicate
  communicator, with a tag (``seq``) unique to the sender-receiver pair. The receiver
  posts that receive as soon as it has read the header, straight into ``out=`` when
  given, so a header costs one small-message latency, not a copy.

While any point-to-point call or ``barrier`` waits, the headers of pending
``irecv``\\s are read and their payload receives posted, so ``irecv(); send(); wait()``
on two ranks cannot deadlock on large messages. (MPI's own collectives, in
:mod:`mlscale.comm._mpi_native`, do not do this: wait for large irecvs before calling one.)
Blocking ``send``/``recv`` with no irecv pending take a shorter path (one ``Send``, or
``Recv`` into a buffer kept for headers).

``mpi4py`` is imported only when an :class:`MPIComm` is made, never by ``import mlscale``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ._mpi_wire import (  # noqa: F401  (_bytes, _mpi, headers: used by _mpi_native and nccl too)
    _RBUF,
    INLINE_BYTES,
    _bytes,
    _make_header,
    _mpi,
    _plan,
    _read_header,
    _RecvRequest,
    _SendRequest,
)
from .base import ANY_SOURCE, Communicator
from ._mpi_state import board, board_text
from .errors import CommError, TimeoutError

_HOOKED = False


def _install_excepthook():
    """Under ``mpiexec -n N python script.py`` an uncaught exception on one rank would
    leave the others waiting forever in their next receive: print the rank, then
    MPI_Abort so mpiexec stops every rank."""
    global _HOOKED
    if _HOOKED or os.environ.get("MLSCALE_MPI_WORKER"):
        return
    _HOOKED = True
    previous = sys.excepthook

    def hook(etype, value, tb):
        try:
            previous(etype, value, tb)
        finally:
            world = _mpi().COMM_WORLD
            if world.Get_size() > 1 and not issubclass(etype, KeyboardInterrupt):
                sys.stderr.write(
                    f"mlscale: rank {world.Get_rank()} of {world.Get_size()} raised "
                    f"{etype.__name__}; calling MPI_Abort so the other ranks do not hang\n"
                )
                sys.stderr.flush()
                time.sleep(0.1)  # let mpiexec forward this rank's last output first
                world.Abort(1)

    sys.excepthook = hook
    _hook_sys_exit()


def _hook_sys_exit():
    """A rank's ``sys.exit(n)`` (n not 0/None) bypasses sys.excepthook and would leave the
    other ranks waiting forever: note the code, and at exit (before MPI_Finalize, which
    mpi4py runs after Python's atexit handlers) print the rank and MPI_Abort. A bare
    ``raise SystemExit(n)`` is not seen: run scripts as ``python -m mpi4py script.py``
    to cover that too (mpi4py then aborts on any exit with an error)."""
    import atexit

    real_exit = sys.exit
    state = {"code": None}

    def exit_(code=None):
        state["code"] = code
        real_exit(code)

    def at_exit():
        code = state["code"]
        if code in (None, 0):
            return
        world = _mpi().COMM_WORLD
        if world.Get_size() > 1:
            sys.stderr.write(
                f"mlscale: rank {world.Get_rank()} of {world.Get_size()} called sys.exit({code!r}); "
                "calling MPI_Abort so the other ranks do not hang\n"
            )
            sys.stderr.flush()
            time.sleep(0.1)
            world.Abort(code if isinstance(code, int) and 0 < code < 256 else 1)

    sys.exit = exit_
    atexit.register(at_exit)



def _ranks(rs):
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


def _mismatch_message(comm, sigs):
    """Which ranks passed what, field by field, for the fields that differ."""
    names = ("collective", "shape", "dtype", "op", "algorithm", "root")
    if not all(isinstance(s, tuple) and len(s) == len(names) for s in sigs):
        names = ("arguments",)
        sigs = [(s,) for s in sigs]
    diffs = []
    for i, field in enumerate(names):
        groups: dict = {}
        for r, s in enumerate(sigs):
            groups.setdefault(repr(s[i]), []).append(r)
        if len(groups) > 1:
            parts = sorted(groups.items(), key=lambda kv: len(kv[1]))
            diffs.append(f"{field}: " + " vs ".join(f"{v} on {_ranks(rs)}" for v, rs in parts))
    what = sigs[comm.rank][0]
    return (
        f"{comm._describe()}: the ranks disagree on {what} (collective #{comm._coll_seq + 1}): "
        + "; ".join(diffs)
        + ". Every rank must call the same collective, in the same order, with the same "
        "shape, dtype, op, algorithm and root."
    )


# ---------------------------------------------------------------------- the engine
class MPIComm(Communicator):
    """A communicator over MPI processes (mpi4py). ``comm`` defaults to
    ``MPI.COMM_WORLD``; it is duplicated, so mlscale's messages never mix with the
    caller's own. ``check=False`` skips the cross-rank argument check of collectives
    (one small ``allgather`` each), as benchmarks do."""

    backend = "mpi"

    def __init__(self, comm=None, check=True):
        MPI = _mpi()
        if isinstance(comm, Communicator):  # an mlscale communicator: use its MPI one
            comm = getattr(comm, "mpi_comm", None) or getattr(comm, "_mpi").mpi_comm
        base = MPI.COMM_WORLD if comm is None else comm
        super().__init__(base.Get_rank(), base.Get_size(), np)
        self.check = bool(check)
        self._hc = base.Dup()  # headers (and inline payloads), collectives
        self._dc = base.Dup()  # large payloads, tag = per-pair sequence number
        self._tag_ub = int(self._hc.Get_attr(MPI.TAG_UB))
        self._seq = [0] * self.world_size
        self._pending: list[_RecvRequest] = []  # irecvs whose header is not read yet
        self._scratch = np.empty(_RBUF, np.uint8)  # blocking receives read headers here
        self._t0 = MPI.Wtime()
        self._board = board()  # what this rank waits for, read by the launcher (_mpi_state)
        if self._board is not None:
            world = MPI.COMM_WORLD.Get_group()
            self._world_ranks = MPI.Group.Translate_ranks(base.Get_group(), list(range(self.world_size)), world)
            world.Free()
            self._board_texts = {}
        _install_excepthook()

    # ------------------------------------------------------------------ the state board
    def _enter(self, what, peer=None, tag=None, nbytes=None):
        """Note on the board that this rank now waits in ``what`` ("send to", "recv from", a
        free text) on ``peer`` (a rank of this communicator, ANY_SOURCE, or None: every rank of
        it). Pair with :meth:`_leave`. Costs nothing when there is no board, and a dict lookup
        plus two small writes when there is (the text of a wait is made once, then reused)."""
        b = self._board
        if b is None:
            return
        key = (what, peer, tag, nbytes, self._label, self._coll_seq)
        text = self._board_texts.get(key)
        if text is None:
            text = self._board_text(*key)
            if len(self._board_texts) > 4096:
                self._board_texts.clear()
            self._board_texts[key] = text
        b.enter_text(text)

    def _board_text(self, what, peer, tag, nbytes, label, coll_seq):
        w = self._world_ranks
        if peer is None or peer == ANY_SOURCE or peer == _mpi().ANY_SOURCE:
            peers = [w[q] for q in range(self.world_size) if q != self.rank]
            mode = "all" if peer is None else "any"
            if peer is not None:
                what += " any rank"
        else:
            peers, mode = [w[peer]], "all"
            what += f" rank {w[peer]}"
        if tag is not None:
            what += f" (tag {tag})" if nbytes is None else f" (tag {tag}, {nbytes} B)"
        if label:
            what = f"{label} (collective #{coll_seq}): {what}"
        if self.world_size != len(w) or w[self.rank] != self.rank:
            what += f" [in a sub-communicator: its ranks are world ranks {w}]"
        return board_text(what, peers, mode)

    def _leave(self):
        if self._board is not None:
            self._board.leave()

    @property
    def mpi_comm(self):
        """The underlying mpi4py communicator (a duplicate of the one given)."""
        return self._hc

    @property
    def clock(self):
        """Wall-clock seconds since this communicator was made (MPI_Wtime)."""
        return _mpi().Wtime() - self._t0

    # ------------------------------------------------------------------ progress
    def _wait_one(self, req, exclude=None):
        """Wait for one MPI request and return its Status, reading the headers of
        other pending irecvs meanwhile (so their payload receives get posted)."""
        MPI = _mpi()
        while True:
            pend = [p for p in self._pending if p is not exclude]
            st = MPI.Status()
            if not pend:
                req.Wait(st)
                return st
            i = MPI.Request.Waitany([req] + [p._hreq for p in pend], st)
            if i == 0:
                return st
            pend[i - 1]._on_header(st)

    def _wait(self, reqs):
        for r in reqs:
            if r:
                self._wait_one(r)

    # ------------------------------------------------------------------ point to point
    def _post_send(self, buf, dst, tag):
        """Start sending; return (MPI requests, buffers to keep alive)."""
        MPI = _mpi()
        if buf.nbytes <= INLINE_BYTES:  # one message: header, then the bytes
            msg, off = _make_header(buf, -1, buf.nbytes)
            msg[off:] = _bytes(buf)
            return [self._hc.Isend([msg, MPI.BYTE], dst, tag)], msg
        seq = self._seq[dst]
        self._seq[dst] = (seq + 1) % self._tag_ub
        h, _ = _make_header(buf, seq)
        r1 = self._hc.Isend([h, MPI.BYTE], dst, tag)
        r2 = self._dc.Isend([_bytes(buf), MPI.BYTE], dst, seq)
        return [r1, r2], (h, buf)

    def _send(self, buf, dst, tag):
        self._enter("send to", dst, tag, buf.nbytes)
        try:
            if buf.nbytes <= INLINE_BYTES and not self._pending:  # fast path: one eager Send
                msg, off = _make_header(buf, -1, buf.nbytes)
                msg[off:] = _bytes(buf)
                self._hc.Send([msg, _mpi().BYTE], dst, tag)
                return
            reqs, keep = self._post_send(buf, dst, tag)
            self._wait(reqs)
            del keep
        finally:
            self._leave()

    def _isend(self, buf, dst, tag):
        reqs, keep = self._post_send(buf, dst, tag)
        return _SendRequest(self, reqs, keep, dst, tag)

    def _irecv(self, src, tag, out):
        return _RecvRequest(self, src, tag, out)

    def sendrecv(self, x, dst, src, tag=0, out=None, _internal=False, _give=False):
        """Send ``x`` to ``dst`` and receive from ``src`` at once (MPI_Sendrecv); the send
        completes even when the receive raises (an ``out=`` that does not fit)."""
        rreq = self.irecv(src, tag, out, _internal=_internal)
        sreq = self.isend(x, dst, tag, _internal=_internal)
        try:
            return rreq.wait()
        finally:
            sreq.wait()

    def _recv(self, src, tag, out):
        self._enter("recv from", src, tag)
        try:
            return self._recv_now(src, tag, out)
        finally:
            self._leave()

    def _recv_now(self, src, tag, out):
        if self._pending:  # irecvs wait for their headers: keep reading them meanwhile
            return _RecvRequest(self, src, tag, out).wait()
        MPI = _mpi()  # fast path: blocking receives into a buffer kept for the purpose
        st = MPI.Status()
        self._hc.Recv([self._scratch, MPI.BYTE], src, tag, st)
        src = st.Get_source()
        y, error, into, seq = _plan(self, self._scratch, src, tag, out)
        if into is not None:
            self._dc.Recv([_bytes(into), MPI.BYTE], src, seq)
            if error is None and out is not None and y is not out:
                out[...] = y
                y = out
        if error is not None:
            raise error
        return y

    def recv(self, src, tag=0, out=None, timeout=None, _internal=False):
        """Blocking receive from rank ``src`` (or :data:`ANY_SOURCE`); ``timeout`` in
        seconds raises :class:`~mlscale.comm.errors.TimeoutError` if nothing arrives."""
        if src == ANY_SOURCE and timeout is None:
            return self.recv_any(tag, out)[1]
        if src != ANY_SOURCE:
            src = self._check_peer(src, "src")
        tag = self._check_tag(tag, _internal)
        if timeout is None:
            return self._recv(src, tag, out)
        return self._recv_timeout(src, tag, out, timeout)[1]

    def recv_any(self, tag=0, out=None, timeout=None):
        """Receive the next message on ``tag`` from whichever rank sends first;
        returns ``(src, array)`` (for parameter servers)."""
        tag = self._check_tag(tag)
        if timeout is None:
            req = _RecvRequest(self, _mpi().ANY_SOURCE, tag, out)
            y = req.wait()
            return req.source, y
        return self._recv_timeout(_mpi().ANY_SOURCE, tag, out, timeout)

    def _recv_timeout(self, src, tag, out, timeout):
        req = _RecvRequest(self, src, tag, out)
        deadline = time.perf_counter() + float(timeout)
        pause = 2e-5
        # (not on the state board: this wait ends by itself, and the launcher must not stop it)
        while not req.test():
            if time.perf_counter() > deadline and req._hreq is not None and req.cancel():
                who = "any rank" if src == _mpi().ANY_SOURCE else f"rank {src}"
                raise TimeoutError(
                    f"{self._describe()}: recv from {who} (tag {tag}) got nothing within "
                    f"timeout={timeout} s; is that rank still running and sending on this tag?"
                )
            time.sleep(pause)
            pause = min(pause * 2, 5e-3)
        return req.source, req.wait()

    # ------------------------------------------------------------------ agreement and collectives
    def _agree(self, signature, extra=None):
        if self._board is not None:
            self._enter(f"the argument check of {signature[0]} (collective #{self._coll_seq + 1})")
        try:
            everyone = self._hc.allgather((signature, extra))
        finally:
            self._leave()
        sigs = [s for s, _ in everyone]
        if any(s != sigs[0] for s in sigs[1:]):
            raise CommError(_mismatch_message(self, sigs))
        return [e for _, e in everyone]

    def _native(self, name):
        from ._mpi_native import NATIVE

        if name == "all_to_all":
            return _native_all_to_all
        return NATIVE.get(name)

    def barrier(self):
        self._enter("barrier")
        try:
            if self._pending:
                self._wait([self._hc.Ibarrier()])
            else:
                self._hc.Barrier()
        finally:
            self._leave()

    def _run(self, name, fn, *args):
        if getattr(fn, "algorithm", None) is not None:  # mlscale's own: its sends/recvs say it
            return super()._run(name, fn, *args)
        if self._board is not None:
            self._enter(f"{name} (collective #{self._coll_seq}, MPI's own)")
        try:
            return super()._run(name, fn, *args)
        finally:
            self._leave()

    def split(self, color, key=None):
        """Sub-communicators (MPI_Comm_split): ranks with the same ``color`` form one,
        ordered by ``key`` (default: rank). ``color=None`` gives None (MPI_UNDEFINED)."""
        MPI = _mpi()
        c = MPI.UNDEFINED if color is None else int(color)
        sub = self._hc.Split(c, self.rank if key is None else int(key))
        if sub == MPI.COMM_NULL:
            return None
        new = MPIComm(sub, check=self.check)
        sub.Free()
        return new

    def free(self):
        """Release the MPI communicators (optional; MPI_Finalize does it too)."""
        for c in (self._hc, self._dc):
            if c != _mpi().COMM_NULL:
                c.Free()

    def abort(self, code=1):
        """Stop every rank of the job at once (MPI_Abort)."""
        self._hc.Abort(code)


def _native_all_to_all(comm, pieces, counts):
    """MPI_Alltoallv on raw bytes: the pieces packed in rank order, counts agreed before."""
    MPI, p, r = _mpi(), comm.world_size, comm.rank
    rows, dt = tuple(pieces[0].shape[1:]), pieces[0].dtype
    row = dt.itemsize * int(np.prod(rows))
    snb = [int(counts[r][j]) * row for j in range(p)]
    rnb = [int(counts[j][r]) * row for j in range(p)]
    sbuf = np.concatenate([_bytes(a) for a in pieces]) if sum(snb) else np.empty(0, np.uint8)
    rbuf = np.empty(sum(rnb), np.uint8)
    sd, rd = np.cumsum([0] + snb[:-1]).tolist(), np.cumsum([0] + rnb[:-1]).tolist()
    comm._hc.Alltoallv([sbuf, snb, sd, MPI.BYTE], [rbuf, rnb, rd, MPI.BYTE])
    return [rbuf[rd[j]:rd[j] + rnb[j]].view(dt).reshape((counts[j][r],) + rows) for j in range(p)]


def launch_mpi(fn, world_size, args=(), device="cpu", timeout=None, **kwargs):
    """Run ``fn(comm, *args)`` on ``world_size`` MPI processes; return the results by
    rank. See :mod:`mlscale.comm._mpi_launch`."""
    from ._mpi_launch import launch_processes

    if device not in ("cpu", None):
        raise CommError(
            f"backend='mpi' runs NumPy ranks on CPUs (device={device!r} asked); "
            "for GPUs use backend='nccl', device='gpu'"
        )
    return launch_processes(fn, world_size, args, engine="mpi", timeout=timeout, **kwargs)


__all__ = ["MPIComm", "launch_mpi", "INLINE_BYTES"]
