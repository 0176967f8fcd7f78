"""How the ``mpi`` engine puts an array on the wire: a small header (nbytes, seq, ndim,
dtype, shape) on the user's tag, the payload inline when small or as a second raw
message on a private communicator when large; and the request handles that read
headers and post payload receives (see :mod:`mlscale.comm.mpi`)."""
from __future__ import annotations

import numpy as np

from .base import Request
from .errors import BackendUnavailable, CommError

#: arrays up to this many bytes travel inside their header message (one MPI message)
INLINE_BYTES = 8192
_HDR_WORDS = 5  # nbytes, seq, ndim, dtype (2 words = 16 ascii bytes); then the shape
_MAX_NDIM = 64
_HDR_MAX = 8 * (_HDR_WORDS + _MAX_NDIM)
_RBUF = _HDR_MAX + INLINE_BYTES

_MPI = None


def _mpi():
    """Import mpi4py's MPI module on first use, with a clear error if it is missing."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise BackendUnavailable(
                f"the mpi engine needs mpi4py and an MPI library ({e}); "
                'install them with: pip install "mlscale[mpi]"'
            ) from None
        _MPI = MPI
    return _MPI


def _pad16(n):
    return (n + 15) & ~15


def _bytes(a):
    """A flat uint8 view of a C-contiguous array (no copy)."""
    return a.reshape(-1).view(np.uint8)


_DTYPE_WORDS: dict = {}


def _dtype_words(dt):
    w = _DTYPE_WORDS.get(dt)
    if w is None:
        s = dt.str.encode()
        if dt.fields is not None or dt.subdtype is not None or len(s) > 16 or dt.hasobject:
            raise CommError(f"cannot send arrays of dtype {dt!r}: use a plain numeric dtype")
        w = np.frombuffer(s.ljust(16, b"\0"), np.int64).copy()
        _DTYPE_WORDS[dt] = w
    return w


def _make_header(buf, seq, extra=0):
    """The header words of ``buf`` (and ``extra`` bytes of room after them, 16-aligned,
    for an inline payload): returns (uint8 message buffer, payload offset)."""
    words = _HDR_WORDS + buf.ndim
    off = _pad16(8 * words)
    msg = np.empty(off + extra if extra else 8 * words, np.uint8)
    h = msg[: 8 * words].view(np.int64)
    h[0] = buf.nbytes
    h[1] = seq
    h[2] = buf.ndim
    h[3:5] = _dtype_words(buf.dtype)
    h[5:] = buf.shape
    return msg, off


_DTYPES: dict = {}


def _read_header(rbuf):
    """(nbytes, seq, shape, dtype, payload offset) from a received header buffer."""
    w = rbuf[: 8 * _HDR_WORDS].view(np.int64)
    nbytes, seq, ndim = int(w[0]), int(w[1]), int(w[2])
    key = rbuf[24:40].tobytes()
    dtype = _DTYPES.get(key)
    if dtype is None:
        dtype = _DTYPES[key] = np.dtype(key.rstrip(b"\0").decode())
    end = 8 * (_HDR_WORDS + ndim)
    shape = tuple(rbuf[8 * _HDR_WORDS : end].view(np.int64).tolist())
    return nbytes, seq, shape, dtype, _pad16(end)


def _plan(comm, rbuf, src, tag, out):
    """What a receive does once its header is read. Returns (result, error, into, seq):
    ``into`` is the buffer the separate payload message must be received into (None if
    the payload came inside the header message); on a mismatch with ``out`` the payload
    is still received (drained, so the sender completes) and ``error`` says why."""
    nbytes, seq, shape, dtype, off = _read_header(rbuf)
    error = None
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype):
        error = CommError(
            f"{comm._describe()}: recv from rank {src} (tag {tag}): rank {src} sent "
            f"shape {shape} dtype {dtype}, but out= has shape {tuple(out.shape)} dtype {out.dtype}"
        )
        return None, error, (None if seq < 0 else np.empty(nbytes, np.uint8)), seq
    y = out if out is not None and out.flags.c_contiguous else np.empty(shape, dtype)
    if seq >= 0:
        return y, None, y, seq
    _bytes(y)[:] = rbuf[off : off + nbytes]
    if out is not None and y is not out:  # a non-contiguous out=
        out[...] = y
        y = out
    return y, None, None, seq


class _SendRequest(Request):
    def __init__(self, comm, reqs, keep, peer=None, tag=None):
        self._comm, self._reqs, self._keep = comm, reqs, keep
        self._peer, self._tag = peer, tag  # for the state board (_mpi_state)

    def wait(self):
        if self._reqs:
            c = self._comm
            c._enter("wait() of an isend to", self._peer, self._tag)
            try:
                c._wait(self._reqs)
            finally:
                c._leave()
            self._reqs, self._keep = [], None
        return None

    def test(self):
        if self._reqs and not _mpi().Request.Testall(self._reqs):
            return False
        self._reqs, self._keep = [], None
        return True


class _RecvRequest(Request):
    """A receive in two steps: the header (posted at once), then the payload (posted
    as soon as the header is read, into ``out`` when given)."""

    def __init__(self, comm, src, tag, out):
        self._comm, self._src, self._tag, self._out = comm, src, tag, out
        self._rbuf = np.empty(_RBUF, np.uint8)
        self._hreq = comm._hc.Irecv([self._rbuf, _mpi().BYTE], src, tag)
        self._preq = None
        self._done = False
        self._result = None
        self._error = None
        self.source = None if src == _mpi().ANY_SOURCE else src
        comm._pending.append(self)

    # called exactly once, when the header request has completed
    def _on_header(self, status):
        comm = self._comm
        self._hreq = None
        if self in comm._pending:
            comm._pending.remove(self)
        self.source = src = status.Get_source()
        self._result, self._error, into, seq = _plan(comm, self._rbuf, src, self._tag, self._out)
        self._rbuf = None
        if into is None:
            self._done = True
        else:
            self._preq = comm._dc.Irecv([_bytes(into), _mpi().BYTE], src, seq)

    def _finish(self):
        self._preq = None
        self._done = True
        if self._error is None and self._out is not None and self._result is not self._out:
            self._out[...] = self._result
            self._result = self._out

    def wait(self):
        if not self._done:
            c = self._comm
            c._enter("wait() of an irecv from", self._src, self._tag)
            try:
                if self._hreq is not None:
                    self._on_header(c._wait_one(self._hreq, exclude=self))
                if self._preq is not None:
                    c._wait([self._preq])
                    self._finish()
            finally:
                c._leave()
        if self._error is not None:
            err, self._error, self._result = self._error, None, None
            raise err
        return self._result

    def test(self):
        if self._done:
            return True
        if self._hreq is not None:
            st = _mpi().Status()
            if not self._hreq.Test(st):
                return False
            self._on_header(st)
        if self._preq is not None:
            if not self._preq.Test():
                return False
            self._finish()
        return self._done

    def cancel(self):
        """Cancel a receive whose header has not arrived. True if cancelled."""
        if self._hreq is None:
            return False
        MPI = _mpi()
        self._hreq.Cancel()
        st = MPI.Status()
        self._hreq.Wait(st)
        if st.Is_cancelled():
            self._hreq = None
            if self in self._comm._pending:
                self._comm._pending.remove(self)
            self._done = True
            return True
        self._on_header(st)  # it had already matched a message: keep it
        return False
