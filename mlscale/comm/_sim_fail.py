"""How a sim run ends badly: the wall-clock alarm of ``launch(timeout=)`` and the
report of ranks that raised.

The alarm: in the main thread (where POSIX delivers signals to Python), a SIGALRM
timer raises ``TimeoutError`` inside the rank that is running when the time is up,
so a rank spinning in pure Python (``while True: pass``) or in ``time.sleep`` is
interrupted too. Elsewhere (another thread, Windows: no SIGALRM) the scheduler
checks the wall clock only when it switches ranks, so such a rank is not interrupted.
The previous SIGALRM handler and timer are put back when the run ends, however it ends.
"""
from __future__ import annotations

import signal
import threading
import time

import greenlet

from .errors import CommError, TimeoutError

_REPEAT = 0.05  # after the first alarm, again every 50 ms (a rank that swallowed it is hit again)


class Alarm:
    def __init__(self, sim, timeout):
        self.sim, self.timeout = sim, timeout
        self.armed = False

    def usable(self):
        return (self.timeout is not None and hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")
                and threading.current_thread() is threading.main_thread())

    def __enter__(self):
        if self.usable():
            self.old_handler = signal.signal(signal.SIGALRM, self._fire)
            self.old_timer = signal.setitimer(signal.ITIMER_REAL, self.timeout, _REPEAT)
            self.started = time.monotonic()
            self.armed = True
        return self

    def __exit__(self, *exc):
        if not self.armed:
            return False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old_handler)
        delay, interval = self.old_timer
        if delay > 0:  # a timer someone else had armed: it goes on with what it had left
            left = delay - (time.monotonic() - self.started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)
        self.armed = False
        return False

    def _fire(self, signum, frame):
        R = self.sim.current
        if R is None or R.glet is not greenlet.getcurrent():
            return  # the scheduler itself: its switch-time check ends the run
        self.sim.timed_out = True
        raise TimeoutError(
            f"{R.name} was still running after launch(timeout={self.timeout}) wall-clock seconds "
            f"(virtual t={R.clock:.6g} s): it computes or sleeps in Python without returning; "
            "give it less work, or a larger timeout")


def combined_failure(failures, world_size):
    """The exception to raise for the ranks that raised: the earliest in virtual
    time (ties: the first to raise), with a note listing the others."""
    order = sorted(range(len(failures)), key=lambda i: (failures[i][1], i))
    first, t0 = failures[order[0]]
    exc = _as_raised(first, world_size)
    if len(order) > 1:
        others = [f"rank {failures[i][0].rank} at t={failures[i][1]:.6g} s: "
                  f"{type(failures[i][0].exc).__name__}: {failures[i][0].exc}" for i in order[1:]]
        _note(exc, f"(the earliest failure in virtual time, t={t0:.6g} s; other ranks also raised:\n  "
              + "\n  ".join(others) + ")")
    return exc


def _as_raised(R, world_size):
    if isinstance(R.exc, SystemExit):  # never end the caller's script silently
        err = CommError(
            f"rank {R.rank} of {world_size} called sys.exit({R.exc.code!r}) (sim engine); "
            "return from the rank's function instead, or raise an exception")
        err.__cause__ = R.exc
        err.rank = R.rank
        return err
    _note(R.exc, f"(raised on rank {R.rank} of {world_size}, sim engine)")
    R.exc.rank = R.rank
    return R.exc


def _note(exc, text):
    if hasattr(exc, "add_note"):
        exc.add_note(text)
