"""Run ``fn(comm, *args)`` on N MPI processes from any Python process (a notebook too).

The stateless path, chosen over ipyparallel's MPI engines because it needs no
controller, starts in well under a second, and leaves nothing behind:

1. ``cloudpickle`` writes ``(fn, args)`` to a fresh temporary directory (functions
   defined in a notebook or ``__main__`` travel by value), with this process's
   ``sys.path`` so functions of importable modules (a test file) resolve on the ranks;
2. ``mpiexec -n N python -m mlscale.comm._mpi_worker DIR`` starts the ranks in a new
   session; each builds its communicator, runs ``fn``, and writes its result, or its
   exception and traceback, to ``DIR/rank<r>.pkl``. A rank that raises calls
   ``MPI_Abort`` after writing, so the others never wait forever for it;
3. meanwhile this process copies the ranks' output (prefixed ``[r]``) to its own
   stdout, so it shows in the notebook cell, and enforces ``timeout``; on timeout,
   ``KeyboardInterrupt`` or any error it stops mpiexec and every process it started;
4. the results come back in rank order; a rank's exception is re-raised here, with
   the rank and its traceback added as a note (``exc.rank`` holds the rank).
"""
from __future__ import annotations

import codecs
import os
import pickle
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import _mpi_state
from .errors import BackendUnavailable, CommError, DeadlockError, RankFailure, TimeoutError

_ENV_DROP = ("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPI_LOCAL")

#: launch(backend="mpi"/"nccl") with timeout=None stops the run after this many seconds
#: (as torch's NCCL watchdog does), unless the environment variable below says otherwise
DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "MLSCALE_MPI_TIMEOUT"  # seconds; "none" or "0" for no limit


def default_timeout():
    """The timeout of a launch given timeout=None: $MLSCALE_MPI_TIMEOUT, else 300 s."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT
    if raw.strip().lower() in ("none", "0", "inf"):
        return None
    try:
        t = float(raw)
    except ValueError:
        t = float("nan")
    if not t > 0 or t != t:
        raise CommError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0, or 'none' for no limit")
    return t


class _Terminated(BaseException):
    """SIGTERM arrived while a launch ran: clean up, then let the signal do its work."""


def find_mpiexec(explicit=None):
    """mpiexec next to this Python (a venv with the ``mpich`` wheel), else on PATH."""
    if explicit:
        return explicit
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found:
        return found
    raise BackendUnavailable(
        "backend='mpi' needs mpiexec (MPICH or Open MPI) and mpi4py, and neither was found "
        f"next to {sys.executable} nor on PATH. Install both with: pip install \"mlscale[mpi]\" "
        "(or use backend='sim', which needs nothing)"
    )


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(world_size, engine, d):
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_DROP)}
    if "HWLOC_XMLFILE" not in env:
        # hydra writes its topology to /tmp/hydra_hwloc_xmlfile_* and leaves it there when
        # a run aborts; given an HWLOC_XMLFILE it writes none (the ranks drop the variable
        # again before MPI starts, see _mpi_worker, so their own hwloc sees the machine)
        env["HWLOC_XMLFILE"] = os.path.join(d, "no-hwloc-topology.xml")
        env["MLSCALE_DROP_HWLOC_XMLFILE"] = env["HWLOC_XMLFILE"]
    env.pop("PYTHONUNBUFFERED", None)  # the ranks write whole lines (see _mpi_worker)
    env["MLSCALE_MPI_WORKER"] = engine
    env["MLSCALE_LAUNCHER_PID"] = str(os.getpid())
    # N ranks share the cores: one BLAS/OpenMP thread each unless told otherwise
    threads = str(max(1, (os.cpu_count() or 1) // world_size))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def _descendants(pid):
    """Every live process below ``pid`` (Linux /proc; empty elsewhere)."""
    children = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _read_pids(d):
    pids = []
    try:
        names = os.listdir(d)
    except OSError:  # already removed
        return pids
    for name in names:
        if name.startswith("pid"):
            try:
                with open(os.path.join(d, name)) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                pass
    return pids


def _kill_all(proc, d):
    """Stop mpiexec and every process it started, whatever state they are in.
    MPICH's hydra starts each rank in a session of its own, so killing mpiexec's
    process group is not enough: the ranks wrote their pids, and /proc lists the rest."""
    victims = set(_descendants(proc.pid)) | set(_read_pids(d))
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # hydra forwards it to the ranks
        except OSError:
            pass
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
    for pid in victims | set(_descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _remove_dir(d, tries=40):
    """Remove the launch's temp folder. A rank that outlives mpiexec for a moment (hydra
    stops the others when one fails, without waiting) can still write a file into it while
    rmtree runs, which leaves the folder behind: stop such ranks (only processes started
    for this folder) and try again."""
    for _ in range(tries):
        if os.path.isdir(d):
            for pid in _read_pids(d):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        ours = d.encode() in f.read()
                except OSError:
                    continue
                if ours:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        shutil.rmtree(d, ignore_errors=True)
        if not os.path.exists(d):
            return
        time.sleep(0.05)


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _rank_error(rank, world_size, info, engine):
    """The exception rank ``rank`` raised, ready to re-raise here."""
    _, blob, tname, msg, tb, _t = info
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RankFailure(f"rank {rank} of {world_size} raised {tname}: {msg}", failed_rank=rank)
    if isinstance(exc, SystemExit):  # never end the caller's script silently (as on sim)
        exc = CommError(
            f"rank {rank} of {world_size} called sys.exit({exc.code!r}) ({engine} engine); "
            "return from the rank's function instead, or raise an exception"
        )
    note = f"(raised on rank {rank} of {world_size}, {engine} engine; its traceback there:)\n{tb.rstrip()}"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: no notes; say it in a CommError chained to the original
        wrapped = CommError(f"rank {rank} of {world_size} raised {tname}: {msg}\n{note}")
        wrapped.__cause__ = exc
        exc = wrapped
    try:
        exc.rank = rank
    except Exception:  # pragma: no cover - exceptions with __slots__
        pass
    return exc


def launch_processes(fn, world_size, args=(), engine="mpi", timeout=None, check=True, echo=True,
                     mpiexec=None, extra_args=(), comm_kwargs=None):
    """Run ``fn(comm, *args)`` on ``world_size`` processes under mpiexec; return the
    list of results by rank. ``engine``: "mpi" (MPIComm), "nccl" (NCCLComm, rank r
    on GPU r) or "torch" (TorchComm: a gloo process group, its store on a free port of
    this machine). ``echo``: copy the ranks' output to this process's stdout (always kept
    for error messages). ``timeout``: wall-clock seconds for the whole run. ``comm_kwargs``:
    passed to the engine's communicator in every rank (e.g. ``{"device": "gpu"}``)."""
    import cloudpickle

    terminated = False
    world_size = int(world_size)
    if isinstance(extra_args, (str, bytes)):
        raise CommError(
            f"mpiexec_args={extra_args!r} is one string; pass a list with one item per argument, "
            f"e.g. {shlex.split(extra_args if isinstance(extra_args, str) else extra_args.decode())!r} "
            "(shlex.split does it)"
        )
    extra_args = [str(a) for a in extra_args]
    if timeout is None:
        timeout = default_timeout()
    grace = _mpi_state.grace_seconds()
    exe = find_mpiexec(mpiexec)
    d = tempfile.mkdtemp(prefix="mlscale-mpi-")
    proc = None
    tail = []
    old_term = _catch_sigterm()
    try:
        meta = {"sys_path": list(sys.path), "engine": engine, "check": check, "world_size": world_size,
                "board": grace is not None,  # the ranks keep state boards (_mpi_state) unless the check is off
                "comm_kwargs": dict(comm_kwargs or {})}
        if engine == "torch":  # torch.distributed's rendezvous: rank 0 serves the store on a free port
            meta["master_port"] = _free_port()
        with open(os.path.join(d, "meta.pkl"), "wb") as f:
            pickle.dump(meta, f)
        try:
            task = cloudpickle.dumps((fn, tuple(args)))
        except Exception as e:
            raise CommError(
                f"launch(backend={engine!r}) must send fn and args to the ranks with cloudpickle, "
                f"and could not ({type(e).__name__}: {e}); pass plain data (arrays, numbers, "
                "lists) as args and make the ranks build anything else"
            ) from e
        with open(os.path.join(d, "task.pkl"), "wb") as f:
            f.write(task)

        cmd = [exe, "-n", str(world_size), *extra_args, "-prepend-rank",
               sys.executable, "-m", "mlscale.comm._mpi_worker", d]
        if "mpich" not in _flavour(exe):
            cmd.remove("-prepend-rank")  # Open MPI spells it --tag-output
            cmd[3:3] = ["--tag-output", "--oversubscribe"]
        start = time.perf_counter()
        deadline = None if timeout is None else start + float(timeout)
        # a Ctrl-C during Popen would leave mpiexec running with nobody to stop it: hold
        # SIGINT until `proc` is known, then let it through (it lands in _pump)
        held = hasattr(signal, "pthread_sigmask")
        if held:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_child_env(world_size, engine, d), start_new_session=True,
            )
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        deaths = {}
        stall = _mpi_state.Watch(d, world_size, grace)
        _pump(proc, deadline, echo, tail, d, deaths, stall)
        if stall.report is not None:  # ranks wait on ranks that returned, or on each other
            _kill_all(proc, d)
            raise DeadlockError(
                f"launch(backend={engine!r}, world_size={world_size}): {stall.report}\n"
                f"All processes were stopped (the check's grace, {_mpi_state.GRACE_ENV}, is {grace:g} s; "
                f"'none' turns it off).{_tail_text(tail)}"
            )
        if proc.returncode is None:  # ran past the deadline
            states = stall.states()
            done = stall.finished()
            _kill_all(proc, d)
            raise TimeoutError(
                f"launch(backend={engine!r}, world_size={world_size}) ran past timeout={timeout} s; "
                f"ranks {[r for r in range(world_size) if r not in done]} had not finished "
                f"(a deadlock? every rank must post the matching send/recv). What each rank was "
                f"doing:\n{_mpi_state.describe(states, done, world_size)}\nAll processes "
                f"were stopped.{_tail_text(tail)}"
            )
        return _collect(d, world_size, engine, proc.returncode, tail, deaths)
    except BaseException as e:
        if proc is not None and proc.poll() is None:
            _kill_all(proc, d)
        if isinstance(e, _Terminated):
            terminated = True
        else:
            raise
    finally:
        if proc is not None:
            if proc.poll() is None:
                _kill_all(proc, d)
            if proc.stdout is not None:
                proc.stdout.close()
        _remove_dir(d)
        _restore_sigterm(old_term)
    if terminated:  # everything is cleaned up: now let SIGTERM end this process as it would have
        os.kill(os.getpid(), signal.SIGTERM)
        raise CommError("launch(backend='mpi') was stopped by SIGTERM; its ranks were stopped")


def _catch_sigterm():
    """While a launch runs (main thread only), SIGTERM raises _Terminated here so the
    ranks are stopped and the temp folder removed; returns the handler to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    old = signal.getsignal(signal.SIGTERM)
    if old is signal.SIG_IGN or old is None:
        return None

    def handler(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    return old


def _restore_sigterm(old):
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _flavour(exe):
    base = os.path.basename(exe)
    if base.startswith("mpiexec.hydra") or os.path.exists(os.path.join(os.path.dirname(exe), "hydra_pmi_proxy")):
        return "mpich"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return "mpich"
    return "openmpi" if "Open MPI" in out or "OpenRTE" in out else "mpich"


class _DeathWatch:
    """Which rank's process ended first without a result (hydra kills the others a few
    ms after it). Each rank's pid file is opened as a pidfd (Linux) that ``select``
    reports the moment the process ends; elsewhere /proc is polled. ``deaths``: rank ->
    order of death (ranks seen gone in the same wake-up share a number)."""

    def __init__(self, d, deaths):
        self.d, self.deaths, self.pids, self.fds = d, deaths, {}, {}

    def scan(self):
        if self.d is None or len(self.pids) == len([n for n in os.listdir(self.d) if n.startswith("pid")]):
            return
        for name in os.listdir(self.d):
            if name.startswith("pid") and name[3:].isdigit() and int(name[3:]) not in self.pids:
                try:
                    with open(os.path.join(self.d, name)) as f:
                        pid = int(f.read().strip())
                except (OSError, ValueError):
                    continue
                self.pids[int(name[3:])] = pid
                try:
                    self.fds[os.pidfd_open(pid)] = int(name[3:])
                except ProcessLookupError:  # it ended before it was seen: ended first so far
                    if not os.path.exists(os.path.join(self.d, f"rank{name[3:]}.pkl")):
                        self.deaths.setdefault(int(name[3:]), 1 + max(self.deaths.values(), default=0))
                except (AttributeError, OSError):
                    pass

    def ready(self, fds):
        """The pidfds among select's ``fds``: those ranks ended."""
        gone = [self.fds[f] for f in fds if f in self.fds]
        for f in [f for f in fds if f in self.fds]:
            os.close(f)
            del self.fds[f]
        if not self.fds and self.pids:  # no pidfds: poll /proc
            gone += [r for r, pid in self.pids.items() if r not in self.deaths and not _alive(pid)]
        gone = [r for r in gone if not os.path.exists(os.path.join(self.d, f"rank{r}.pkl"))]
        if gone:
            n = 1 + max(self.deaths.values(), default=0)
            for r in gone:
                self.deaths.setdefault(r, n)

    def close(self):
        for f in self.fds:
            os.close(f)
        self.fds = {}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _pump(proc, deadline, echo, tail, d=None, deaths=None, stall=None):
    """Copy the ranks' output here (from this thread: a notebook shows it in the cell)
    until mpiexec exits, the deadline passes or ``stall`` (a :class:`_mpi_state.Watch`)
    finds a deadlock (its ``report``); meanwhile note which ranks die."""
    watch = _DeathWatch(d, {} if deaths is None else deaths)
    try:
        _pump_loop(proc, deadline, echo, tail, watch, stall)
    finally:
        watch.close()


def _pump_loop(proc, deadline, echo, tail, watch, stall=None):
    fd = proc.stdout.fileno()
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    kept = 0
    next_check = time.perf_counter() + 0.25
    while True:
        watch.scan()
        if stall is not None and time.perf_counter() >= next_check:
            next_check = time.perf_counter() + 0.25
            if proc.poll() is None:
                stall.report = stall.check()
                if stall.report is not None:
                    return
        wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.perf_counter()))
        ready, _, _ = select.select([fd, *watch.fds], [], [], wait)
        watch.ready(ready)
        if fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:  # EOF: every rank closed its output; mpiexec is exiting
                while proc.poll() is None:
                    if deadline is not None and time.perf_counter() >= deadline:
                        return
                    time.sleep(0.005)
                return
            text = _drop_noise(dec.decode(chunk))
            if echo and text:
                sys.stdout.write(text)
                sys.stdout.flush()
            tail.append(text)
            kept += len(text)
            while kept > 20000 and len(tail) > 1:
                kept -= len(tail.pop(0))
        elif proc.poll() is not None and not ready:
            # mpiexec gone; output pipe may be held by a stray child: do not wait on it
            return
        if deadline is not None and time.perf_counter() >= deadline:
            return


def _drop_noise(text):
    """Hide MPICH's "application called MPI_Abort" line: the launcher re-raises the
    rank's own exception, which says more."""
    if "called MPI_Abort(MPI_COMM_WORLD, 1)" not in text:
        return text
    return "".join(line for line in text.splitlines(True) if "called MPI_Abort(MPI_COMM_WORLD, 1)" not in line)


def _tail_text(tail):
    text = "".join(tail).strip()
    if not text:
        return ""
    return "\nLast output of the ranks:\n" + text[-3000:]


# other ranks' output can land between hydra's lines: allow a little of it in between
_BAD_PID = re.compile(r"BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES[\s\S]{0,600}?PID (\d+) RUNNING AT")
_SIGNAL = re.compile(r"EXIT STRING: ([^\n]*?)\s*\(signal (\d+)\)")


def _was_waiting(d, rank):
    """Did rank's state board (_mpi_state) say it was waiting in a blocking call?"""
    st = _mpi_state.read(os.path.join(d, f"state{rank}"))
    return bool(st and st[1])


def _how_died(d, world_size, returncode, tail, deaths, missing):
    """(rank that died first, how, the others) for ranks that ended without a result:
    hydra names the PID of a rank killed by a signal; otherwise the first rank seen gone."""
    text = "".join(tail)
    pids = {}
    for r in range(world_size):
        try:
            with open(os.path.join(d, f"pid{r}")) as f:
                pids[int(f.read().strip())] = r
        except (OSError, ValueError):
            pass
    first, how = None, None
    for r in missing:  # a rank that called os._exit said so first (_mpi_worker)
        try:
            with open(os.path.join(d, f"exit{r}")) as f:
                code = f.read().strip()
        except OSError:
            continue
        return r, f"called os._exit({code})", [q for q in missing if q != r]
    # the first rank seen gone (hydra stops the others after it); hydra's own report names
    # a PID too, but once it has killed the rest it can name any of them (rank 0 often),
    # so it only settles a tie
    if deaths:
        earliest = min(deaths.values())
        firsts = sorted(r for r, n in deaths.items() if n == earliest)
        if len(firsts) > 1:  # seen gone together: a rank killed while it waited in a blocking
            # call was most likely stopped by hydra after another died; prefer the ones that
            # were running (their state board says they waited for nothing)
            running = [r for r in firsts if not _was_waiting(d, r)]
            if running:
                firsts = running
        if len(firsts) == 1:
            first = firsts[0]
    bad = _BAD_PID.search(text)
    if first is None and bad and pids.get(int(bad.group(1))) in missing:
        first = pids[int(bad.group(1))]
    sig = _SIGNAL.search(text)
    if first is not None and sig:
        num = int(sig.group(2))
        try:
            how = f"was killed by signal {signal.Signals(num).name} ({num})"
        except ValueError:
            how = f"was killed by signal {num}"
    if first is None:
        return None, None, missing
    if how is None:
        if returncode is not None and returncode < 0:
            how = f"was killed by signal {signal.Signals(-returncode).name}"
        elif returncode:
            how = f"exited with code {returncode} without a result (os._exit, or the process was killed)"
        else:
            how = "exited without a result"
    return first, how, [r for r in missing if r != first]


def _collect(d, world_size, engine, returncode, tail, deaths=None):
    results, errors, missing = [None] * world_size, [], []
    for r in range(world_size):
        path = os.path.join(d, f"rank{r}.pkl")
        if not os.path.exists(path):
            missing.append(r)
            continue
        try:
            info = _load(path)
        except Exception as e:
            raise CommError(
                f"launch(backend={engine!r}): could not unpickle the result of rank {r} "
                f"({type(e).__name__}: {e}); return arrays, numbers or plain containers"
            ) from e
        if info[0] == "ok":
            results[r] = info[1]
        else:
            errors.append((info[5], r, info))
    if errors:
        errors.sort()
        _, r, info = errors[0]
        exc = _rank_error(r, world_size, info, engine)
        others = [e[1] for e in errors[1:]]
        if others and hasattr(exc, "add_note"):
            exc.add_note(f"(ranks {others} raised too; rank {r} was the first)")
        raise exc
    if missing:
        first, how, others = _how_died(d, world_size, returncode, tail, deaths or {}, missing)
        if first is not None:
            also = f"; rank(s) {others} were stopped after it" if others else ""
            raise RankFailure(
                f"launch(backend={engine!r}, world_size={world_size}): rank {first} {how}{also}. "
                f"Out of memory, os._exit or a crash in fn?{_tail_text(tail)}",
                failed_rank=first,
            )
        raise RankFailure(
            f"launch(backend={engine!r}, world_size={world_size}): rank(s) {missing} ended without "
            f"a result (mpiexec exit code {returncode}): killed, out of memory, or os._exit "
            f"in fn?{_tail_text(tail)}",
            failed_rank=missing[0],
        )
    return results
