"""What each MPI rank is waiting for, so a launch that can no longer finish says so in seconds.

Under ``launch(backend="mpi")`` every rank keeps a small *state board*: a 512-byte file in the
launch's temporary folder, mapped into memory (``mmap``), into which it writes, before every
call that can block (a blocking send or receive, ``wait()``, a barrier, an MPI collective, the
argument check of a collective), what it waits for and on whom, and after it, that it no longer
waits. Writing is a few hundred nanoseconds; nothing is written when the rank was not started
by :mod:`mlscale.comm._mpi_launch`.

The launcher reads the boards while the ranks run (:func:`diagnose`) and stops the job with a
:class:`~mlscale.comm.errors.DeadlockError` when

- a rank has waited, for ``grace`` seconds and in the same call, on a rank that has already
  returned its result (a returned rank sends nothing more: a missing message, a mismatched tag,
  a collective that rank skipped), or
- every rank still running has waited, each in the same call, for ``3 * grace`` seconds (they
  wait on each other: e.g. two large blocking sends before the receives).

``grace`` is ``$MLSCALE_MPI_DEADLOCK`` seconds (default 3; ``none`` turns the check and the boards
off: about 1 us saved per blocking call). On a timeout the launcher prints the boards too: what
every rank was doing when it was stopped.

Layout: ``<Q`` sequence number (odd while the rank writes), ``<B`` waiting flag, ``<d`` since
(``time.monotonic``, one clock for all processes of the machine), ``<H`` text length, text
(UTF-8): ``what|mode|peers`` with peers as world ranks, mode ``all`` (every peer must act) or
``any`` (one of them suffices, as ``ANY_SOURCE``).
"""
from __future__ import annotations

import mmap
import os
import struct
import time

SIZE = 512
_HEAD = struct.Struct("<QBdH")
_SEQ = struct.Struct("<Q")
GRACE_ENV = "MLSCALE_MPI_DEADLOCK"
DEFAULT_GRACE = 3.0


def grace_seconds():
    """The deadlock check's grace in seconds, or None when $MLSCALE_MPI_DEADLOCK turns it off."""
    raw = os.environ.get(GRACE_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_GRACE
    if raw in ("none", "off", "0"):
        return None
    try:
        g = float(raw)
    except ValueError:
        g = float("nan")
    if not g > 0:
        from .errors import CommError

        raise CommError(f"{GRACE_ENV}={raw!r} must be a number of seconds > 0, or 'none' to turn the check off")
    return g


def board_text(what, peers, mode="all"):
    """The bytes a board holds for one wait: ``what|mode|peers``, cut to fit."""
    return f"{what}|{mode}|{','.join(map(str, peers))}".encode("utf-8", "replace")[: SIZE - _HEAD.size]


class Board:
    """One rank's state board (the writing side). ``enter``/``leave`` nest: only the outermost
    blocking call is written (an MPI collective that waits inside is one wait, not many)."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            self._m = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._seq = 0
        self._depth = 0

    def enter(self, what, peers, mode="all"):
        self.enter_text(board_text(what, peers, mode))

    def enter_text(self, text):
        """``enter`` with the text made by :func:`board_text` (communicators keep them)."""
        self._depth += 1
        if self._depth > 1:
            return
        m = self._m
        self._seq += 1
        m[:8] = _SEQ.pack(2 * self._seq + 1)  # odd: being written
        m[_HEAD.size : _HEAD.size + len(text)] = text
        m[: _HEAD.size] = _HEAD.pack(2 * self._seq, 1, time.monotonic(), len(text))

    def leave(self):
        self._depth -= 1
        if self._depth == 0:
            self._m[8] = 0  # the waiting flag: one byte, written at once


_BOARD = None


def board():
    """This process's board when run by the mlscale launcher (``$MLSCALE_MPI_STATE`` names the
    file), else None. Made once per process; every communicator of the rank shares it."""
    global _BOARD
    if _BOARD is None:
        path = os.environ.get("MLSCALE_MPI_STATE")
        if not path:
            return None
        _BOARD = Board(path)
    return _BOARD


def read(path):
    """(seq, waiting, since, what, mode, peers) from a board file, or None (not written yet,
    or being written: read it again)."""
    try:
        with open(path, "rb") as f:
            data = f.read(SIZE)
    except OSError:
        return None
    if len(data) < _HEAD.size:
        return None
    seq, waiting, since, n = _HEAD.unpack_from(data)
    if seq == 0 or seq % 2:
        return None
    what, _, rest = data[_HEAD.size : _HEAD.size + n].decode("utf-8", "replace").partition("|")
    mode, _, peers = rest.partition("|")
    return seq, bool(waiting), since, what, mode, [int(p) for p in peers.split(",") if p]


def _ranks(rs):
    rs = sorted(rs)
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


def describe(states, finished, world_size):
    """One line per rank: returned, waiting (for what, for how long), or running Python."""
    now = time.monotonic()
    lines = []
    for r in range(world_size):
        s = states.get(r)
        if r in finished:
            lines.append(f"  rank {r}: had returned its result")
        elif s is None:
            lines.append(f"  rank {r}: running (no communication yet)")
        elif s[1]:
            lines.append(f"  rank {r}: waiting {now - s[2]:.1f} s in {s[3]}")
        else:
            lines.append(f"  rank {r}: running Python (its last communication, {s[3]}, had completed)")
    return "\n".join(lines)


class Watch:
    """The launcher's side: call :meth:`check` every few tenths of a second; it returns the
    deadlock report (a string) once the job can no longer finish, else None."""

    def __init__(self, d, world_size, grace):
        self.d, self.p, self.grace = d, world_size, grace
        self.report = None  # set by the launcher once check() finds a deadlock

    def states(self):
        out = {}
        for r in range(self.p):
            s = read(os.path.join(self.d, f"state{r}"))
            if s is None:  # being written: once more
                s = read(os.path.join(self.d, f"state{r}"))
            if s is not None:
                out[r] = s
        return out

    def finished(self):
        return {r for r in range(self.p) if os.path.exists(os.path.join(self.d, f"rank{r}.pkl"))}

    def check(self):
        if self.grace is None:
            return None
        finished = self.finished()
        running = [r for r in range(self.p) if r not in finished]
        if not running:
            return None
        states = self.states()
        report = self._partial(states, finished, running)  # waits on a rank that returned
        if report:
            return report
        # every running rank waits, each in the same call for 3 x grace: they wait on each other
        now = time.monotonic()
        if all(r in states and states[r][1] and now - states[r][2] >= 3 * self.grace for r in running):
            return (
                f"every rank still running has waited at least {3 * self.grace:.0f} s, each in the "
                "same call, for the others: a deadlock (e.g. blocking sends posted before the "
                "matching receives, above the eager limit; use sendrecv or isend)\n"
                + describe(states, finished, self.p)
            )
        return None

    def _partial(self, states, finished, running):
        """A running rank that has waited ``grace`` seconds on ranks that returned."""
        if not finished:
            return None
        now = time.monotonic()
        for r in running:
            s = states.get(r)
            if s is None or not s[1] or now - s[2] < self.grace:
                continue
            _, _, since, what, mode, peers = s
            gone = [q for q in peers if q in finished]
            if gone and (mode == "all" or len(gone) == len(peers)):
                return (
                    f"rank {r} has waited {now - since:.1f} s in {what}, on {_ranks(gone)}, which "
                    f"had already returned its result and will send nothing more: a deadlock "
                    "(a message never sent, mismatched tags, or a collective some rank skipped)\n"
                    + describe(states, finished, self.p)
                )
        return None
