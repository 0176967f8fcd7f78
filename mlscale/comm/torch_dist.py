"""The ``torch`` engine: :class:`TorchComm` over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

    ms.launch(program, world_size=4, backend="torch")      # 4 processes, gloo
    # or, in a script:  torchrun --nproc-per-node 4 script.py   with   ms.comm.TorchComm()
    # several machines: torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
    #                            --rdzv-endpoint host0:29500 script.py

A bridge to PyTorch: the same programs that run on ``sim`` and ``mpi`` run on the
process groups that torch DDP, ``ZeroRedundancyOptimizer`` and FSDP use. NumPy arrays go
in and come out; torch tensors are made only at the wire (``torch.from_numpy``: no copy).

Starting. ``TorchComm()`` joins the default process group, calling
``init_process_group("gloo")`` from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) if the program has not. ``ms.launch(..., backend="torch")`` starts the
processes with mpiexec, as ``backend="mpi"`` does (the same fault reports: a rank that
raises, exits or dies is named; a deadlock is reported in seconds), and torch.distributed
then carries every byte: MPI only starts the processes and stops them.

Point to point. gloo needs the size of a message before it arrives, so every message is
a small header (dtype, shape, bytes, a per-pair sequence number) sent with the user's tag
(torch's tags are matched per sender, like MPI's), then the payload, tagged with that
sequence number. A payload is received only once
its header is in, so a rank waiting anywhere (a blocking send, a collective) keeps posting
the payload receives of its pending ``irecv`` calls: a ring of blocking sends after irecvs does
not deadlock, as with MPI.

Collectives. ``algorithm=None`` runs gloo's own where gloo has it (all_reduce, broadcast,
reduce; all_gather of equal pieces), mlscale's default algorithm otherwise (gloo has no
reduce_scatter; uneven pieces; dtypes gloo cannot reduce: bool, int16, complex);
mlscale's own algorithms run over the send/recv above, as on every engine.
``split`` makes a new gloo process group over a prefix of the world's store, so only the
members of the new group take part (sub-communicators of sub-communicators work).

GPUs. ``TorchComm(device="gpu")`` (``ms.launch(..., backend="torch", device="gpu")``, or
under torchrun, GPU ``LOCAL_RANK``) carries the arrays over NCCL and the headers and
argument checks over a gloo group beside it, CuPy arrays in and out: see
:mod:`mlscale.comm.torch_nccl` (``two_groups=True`` runs that code on CPU). Its clear
errors say what is missing: a CUDA torch, NCCL in the build, CuPy, a GPU per rank.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import numpy as np

from ..collectives import ALGORITHMS, default_algorithm
from ..collectives._reduce_ops import finish
from ._mpi_state import board, board_text
from .base import ANY_SOURCE, Communicator, Request
from .errors import BackendUnavailable, CommError

_NEEDS = ('backend="torch" needs PyTorch ({why}); pip install "mlscale[torch]" (a CPU build is enough: '
          "pip install torch --index-url https://download.pytorch.org/whl/cpu)")

#: dtypes a message may carry (the header holds the index)
_DTYPES = [np.dtype(t) for t in ("?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8",
                                 "c16")]
_CODE = {d: i for i, d in enumerate(_DTYPES)}
_MAXDIM = 8
_HDR = 4 + _MAXDIM  # dtype code, ndim, nbytes, sequence number, shape
_PAYLOAD = 1 << 24  # payload tags: this + the sender's per-pair sequence number (headers: the user's tag)
_SEQ_WRAP = (1 << 30) - _PAYLOAD
#: dtypes gloo reduces (the rest run mlscale's algorithm)
_GLOO_REDUCE = {np.dtype(t) for t in ("i1", "u1", "i4", "i8", "f4", "f8")}


def _header(torch, buf, seq):
    """The int64 header of a message: dtype code, ndim, nbytes, sequence number, shape."""
    h = [_CODE[buf.dtype], buf.ndim, buf.nbytes, seq] + list(buf.shape) + [0] * (_MAXDIM - buf.ndim)
    return torch.tensor(h, dtype=torch.int64)


def _check_sendable(comm, buf):
    if buf.dtype not in _CODE:
        raise CommError(f"{comm._describe()}: cannot send dtype {buf.dtype} on the torch engine; "
                        f"send one of {[str(d) for d in _DTYPES]}")
    if buf.ndim > _MAXDIM:
        raise CommError(f"{comm._describe()}: a {buf.ndim}-d array; the torch engine sends up to "
                        f"{_MAXDIM} dims: reshape it first")


def _read_header(hdr):
    """(dtype, shape, nbytes, seq) of a received header tensor."""
    h = hdr.tolist()
    return _DTYPES[h[0]], tuple(h[4:4 + h[1]]), h[2], h[3]


def _torch():
    try:
        import torch
        import torch.distributed as dist
    except Exception as e:  # ImportError, or a broken install
        raise BackendUnavailable(_NEEDS.format(why=f"{type(e).__name__}: {e}")) from None
    if not dist.is_available() or not dist.is_gloo_available():
        raise BackendUnavailable(_NEEDS.format(why="this PyTorch build has no torch.distributed with gloo"))
    return torch, dist


def timeout_seconds():
    """gloo's timeout for one operation: $MLSCALE_TORCH_TIMEOUT seconds (default 300)."""
    try:
        return float(os.environ.get("MLSCALE_TORCH_TIMEOUT", "300"))
    except ValueError:
        raise CommError(f"MLSCALE_TORCH_TIMEOUT={os.environ['MLSCALE_TORCH_TIMEOUT']!r} must be seconds") from None


def _init_default_group(dist, backend="gloo", device_id=None):
    """init_process_group(backend) from torchrun's environment (NCCL: bound to ``device_id``,
    which makes its communicator at once), and the leave-together handler at exit."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise CommError(
            f"TorchComm(): torch.distributed is not initialised and {missing} are not set. Start the "
            "script with torchrun (torchrun --nproc-per-node 4 script.py), call "
            "torch.distributed.init_process_group('gloo') first, or use ms.launch(fn, 4, backend='torch')"
        )
    kw = {} if device_id is None else {"device_id": device_id}
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()), **kw)
    _leave_together_at_exit(dist)


_EXIT = {"code": None, "failed": False}


def close_default_group():
    """Close the default process group (every rank together) and end this process with
    status 0 once MPI, if it runs, is finalised; used by ms.launch's ranks."""
    import sys

    _, dist = _torch()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if "mpi4py" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _leave_together_at_exit(dist):
    """At exit of a process that made the default group (a torchrun script): wait for the
    other ranks, close the group, and end the process at once with its exit code.

    Why at once: torch 2.x's gloo, after point-to-point traffic, can abort a process in its
    C++ teardown ("terminate called without an active exception") although every rank
    finished (about 1 run in 4 of a 2-rank script here). So the handler ends the process
    with ``os._exit`` after flushing; atexit handlers registered before this communicator
    was made do not run. A rank that raised (or called sys.exit(n)) skips the final
    barrier: torchrun stops the others."""
    import atexit
    import sys

    previous_hook, real_exit = sys.excepthook, sys.exit

    def hook(etype, value, tb):
        _EXIT["failed"] = True
        previous_hook(etype, value, tb)

    def exit_(code=None):
        _EXIT["code"] = code
        real_exit(code)

    def at_exit():
        code = _EXIT["code"]
        failed = _EXIT["failed"] or code not in (None, 0)
        try:
            if dist.is_initialized():
                if not failed:
                    dist.barrier()
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone: nothing left to do
            failed = True
        if isinstance(code, str):
            sys.stderr.write(code + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        status = code if isinstance(code, int) and code else (1 if failed else 0)
        os._exit(status)

    sys.excepthook, sys.exit = hook, exit_
    atexit.register(at_exit)


def _op(dist, op):
    R = dist.ReduceOp
    return {"sum": R.SUM, "mean": R.SUM, "max": R.MAX, "min": R.MIN, "prod": R.PRODUCT}[op]


class _Send(Request):
    def __init__(self, comm, works, keep, peer, tag, nbytes):
        self.comm, self.works, self.keep = comm, works, keep
        self.peer, self.tag, self.nbytes, self.done = peer, tag, nbytes, False

    def test(self):  # gloo's send completes only in wait(): say so rather than spin
        return self.done

    def wait(self):
        if not self.done:
            c = self.comm
            c._enter("send to", self.peer, self.tag, self.nbytes)
            try:
                c._finish(self.works, f"send to rank {self.peer}")
            finally:
                c._leave()
            self.done, self.keep, self.works = True, None, None
        return None

    def __del__(self):  # dropped without wait(): gloo would cancel the send with its Work
        if not self.done and self.works:
            _orphans().put((self.works, self.keep))


_REAPER = None


def _orphans():
    """A queue whose thread waits for the sends nobody waits for (an isend whose request
    was dropped), keeping their buffers alive until the receiver has them."""
    global _REAPER
    if _REAPER is None:
        import queue
        import threading

        q = queue.SimpleQueue()

        def reap():
            while True:
                works, _keep = q.get()
                for w in works:
                    try:
                        w.wait()
                    except Exception:  # noqa: BLE001 - a peer that died: nothing to report to
                        pass

        threading.Thread(target=reap, daemon=True, name="mlscale-torch-sends").start()
        _REAPER = q
    return _REAPER


class _Recv(Request):
    """The header receive is posted at once (so messages match in the order of the
    calls); a thread waits for it, then receives the payload, whose tag is the sender's
    per-pair sequence number from the header. So the payload is taken in whatever this
    rank does meanwhile (a blocking send, a collective): no deadlock."""

    def __init__(self, comm, src, tag, out, background=True):
        torch = comm._torch
        self.comm, self.src, self.tag, self.out = comm, src, tag, out
        self.hdr = torch.zeros(_HDR, dtype=torch.int64)
        pg = comm._pg
        self.hw = pg.recv_anysource([self.hdr], tag) if src == ANY_SOURCE else pg.recv([self.hdr], src, tag)
        self.result = self.error = None
        self.thread = None
        if background:
            import threading

            self.thread = threading.Thread(target=self._run, daemon=True, name="mlscale-torch-recv")
            self.thread.start()

    def _run(self):
        try:
            self.result = self._receive()
        except BaseException as e:  # noqa: BLE001 - re-raised by wait()
            self.error = e

    def _receive(self):
        c = self.comm
        c._finish([self.hw], f"recv from rank {self.src}")
        if self.src == ANY_SOURCE:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.src = int(self.hw.source_rank())
        self.hw = None  # no gloo Work outlives its operation (one alive at exit can abort the process)
        dtype, shape, nbytes, seq = _read_header(self.hdr)
        out, error = self.out, None
        if out is not None and (tuple(out.shape) != shape or out.dtype != dtype):
            error = CommError(
                f"{c._describe()}: recv(out=) from rank {self.src} (tag {self.tag}): the message is "
                f"shape {shape} {dtype}, out= is shape {tuple(out.shape)} {out.dtype}; pass an out= "
                "of the sent shape and dtype, or none")
            out = None
        buf = out if out is not None and out.flags.c_contiguous else np.empty(shape, dtype)
        if nbytes:  # received even after a mismatch, so the channel stays in step
            flat = buf.reshape(-1).view(np.uint8)
            w = c._pg.recv([c._torch.from_numpy(flat)], self.src, _PAYLOAD + seq)
            c._finish([w], f"recv from rank {self.src}")
            del w
        if error is not None:
            raise error
        if out is not None and buf is not out:
            out[...] = buf
            buf = out
        return buf

    def test(self):
        return self.thread is not None and not self.thread.is_alive()

    def wait(self):
        """Joins the receiving thread (not merely an event it sets): a thread still inside
        torch when the process exits would be killed there, and that aborts the process."""
        c = self.comm
        if self.thread is None:  # a blocking receive: in this thread
            c._enter("recv from", self.src, self.tag)
            try:
                return self._receive()
            finally:
                c._leave()
        if self.thread.is_alive():
            c._enter("recv from", self.src, self.tag)
            try:
                self.thread.join()
            finally:
                c._leave()
        if self.error is not None:
            raise self.error
        return self.result


class TorchComm(Communicator):
    """A communicator over torch.distributed (default: the world, joined or initialised
    from torchrun's environment). ``check=False`` skips the cross-rank argument check of
    collectives.

    ``device="cpu"`` (default): one gloo process group carries everything; NumPy arrays.
    ``device="gpu"``: NCCL carries the arrays, CuPy arrays on this rank's GPU (GPU
    ``LOCAL_RANK``), and a gloo group beside it the headers and argument checks: see
    :mod:`mlscale.comm.torch_nccl`. ``two_groups=True`` with ``device="cpu"`` runs that
    same two-group code with a second gloo group for the arrays (NumPy through DLPack):
    the GPU engine's logic, on a machine without one."""

    backend = "torch"

    def __new__(cls, *args, device="cpu", two_groups=False, **kwargs):
        if len(args) > 2:  # device (and two_groups) given by position
            device, two_groups = args[2], (args[3] if len(args) > 3 else two_groups)
        if cls is TorchComm and (device == "gpu" or two_groups):
            from .torch_nccl import TorchTwoGroupComm

            cls = TorchTwoGroupComm
        return super().__new__(cls)

    def __init__(self, group=None, check=True, device="cpu", two_groups=False, _members=None, _uid="w"):
        if device not in ("cpu", None):
            raise CommError(f"TorchComm(device={device!r}): use device='cpu' (gloo, NumPy arrays) or "
                            "device='gpu' (NCCL, CuPy arrays)")
        torch, dist = _torch()
        self._torch, self._dist = torch, dist
        if group is None:
            if not dist.is_initialized():
                _init_default_group(dist)
            if dist.get_backend() != "gloo":
                raise CommError(f"TorchComm runs on gloo; the default process group is {dist.get_backend()!r}")
            group = dist.distributed_c10d._get_default_group()
        self._pg = group
        super().__init__(group.rank(), group.size(), np)
        self.check = bool(check)
        self._members = list(range(self.world_size)) if _members is None else list(_members)  # world ranks
        self._uid, self._splits = _uid, 0
        self._seq = [0] * self.world_size  # per destination: the payload tags
        self._t0 = time.perf_counter()
        self._board = board()  # what this rank waits for, read by ms.launch's watcher (_mpi_state)

    # ------------------------------------------------------------------ waiting
    def _finish(self, works, what, on="gloo"):
        for w in works:
            try:
                w.wait()
            except RuntimeError as e:  # a peer died, or gloo's timeout
                why = str(e).split("\n")[0]
                if "closed by peer" in why.lower():
                    why = ("a peer process ended (it raised, exited or was killed) while this rank waited; "
                           f"gloo says: {why}")
                raise CommError(f"{self._describe()}: {what} failed in {on}: {why}") from None

    def _wait_works(self, works, what):
        self._enter(what)
        try:
            self._finish(works, what)
        finally:
            self._leave()

    def _enter(self, what, peer=None, tag=None, nbytes=None):
        b = self._board
        if b is None:
            return
        w = self._members
        if peer is None or peer == ANY_SOURCE:
            peers = [w[q] for q in range(self.world_size) if q != self.rank]
            mode = "all" if peer is None else "any"
        else:
            peers, mode = [w[peer]], "all"
            what += f" rank {w[peer]}"
        if tag is not None:
            what += f" (tag {tag})" if nbytes is None else f" (tag {tag}, {nbytes} B)"
        if self._label:
            what = f"{self._label} (collective #{self._coll_seq}): {what}"
        if w != list(range(len(w))) or len(w) != self._dist.get_world_size():
            what += f" [in a sub-communicator: its ranks are world ranks {w}]"
        b.enter_text(board_text(what, peers, mode))

    def _leave(self):
        if self._board is not None:
            self._board.leave()

    @property
    def clock(self):
        """Wall-clock seconds since this communicator was made."""
        return time.perf_counter() - self._t0

    @property
    def process_group(self):
        """The torch.distributed ProcessGroup underneath."""
        return self._pg

    # ------------------------------------------------------------------ point to point
    def _post_send(self, buf, dst, tag):
        if tag >= _PAYLOAD:
            raise CommError(f"{self._describe()}: internal tag {tag} collides with the torch engine's payload tags")
        _check_sendable(self, buf)
        torch = self._torch
        seq = self._seq[dst] = (self._seq[dst] + 1) % _SEQ_WRAP
        hdr = _header(torch, buf, seq)
        works, keep = [self._pg.send([hdr], dst, tag)], [hdr]
        if buf.nbytes:
            flat = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
            t = torch.from_numpy(flat)
            works.append(self._pg.send([t], dst, _PAYLOAD + seq))
            keep += [flat, t]
        return _Send(self, works, keep, dst, tag, buf.nbytes)

    def _send(self, buf, dst, tag):
        self._post_send(buf, dst, tag).wait()

    def _isend(self, buf, dst, tag):
        return self._post_send(buf.copy() if buf.flags.writeable else buf, dst, tag)

    def _isend_given(self, buf, dst, tag):
        return self._post_send(buf, dst, tag)

    def _irecv(self, src, tag, out):
        return _Recv(self, src, tag, out)

    def _recv(self, src, tag, out):
        return _Recv(self, src, tag, out, background=False).wait()

    def recv_any(self, tag=0, out=None):
        """Receive from whichever rank sends first: returns ``(source rank, array)``."""
        tag = self._check_tag(tag)
        r = _Recv(self, ANY_SOURCE, tag, out, background=False)
        arr = r.wait()
        return r.src, arr

    # ------------------------------------------------------------------ engine hooks
    def _agree(self, signature, extra=None):
        from .mpi import _mismatch_message

        everyone = self._gather_objects((signature, extra), "the argument check of " + str(signature[0]))
        sigs = [s for s, _ in everyone]
        if any(s != sigs[0] for s in sigs[1:]):
            raise CommError(_mismatch_message(self, sigs))
        return [e for _, e in everyone]

    def _gather_objects(self, obj, what):
        """Every rank's picklable ``obj``, in rank order (pickled, over gloo's all_gather)."""
        import pickle

        torch = self._torch
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        n = torch.tensor([data.size], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        self._wait_works([self._pg.allgather([sizes], [n])], what)
        big = max(int(s) for s in sizes)
        mine = torch.zeros(big, dtype=torch.uint8)
        mine[:data.size] = torch.from_numpy(data.copy())
        outs = [torch.zeros(big, dtype=torch.uint8) for _ in range(self.world_size)]
        self._wait_works([self._pg.allgather([outs], [mine])], what)
        return [pickle.loads(o[:int(s)].numpy().tobytes()) for o, s in zip(outs, sizes)]

    def _native(self, name):
        return _NATIVE.get(name)

    def barrier(self):
        self._wait_works([self._pg.barrier()], "barrier")

    def split(self, color, key=None):
        """Sub-communicators, as MPI_Comm_split: ranks with the same ``color`` form one,
        ordered by ``key`` (default: rank); ``color=None`` gives None. Collective over this
        communicator; the new gloo group lives under its own prefix of the store."""
        dist = self._dist
        me = (None if color is None else int(color), self.rank if key is None else int(key), self.rank)
        everyone = self._gather_objects(me, "split")
        self._splits += 1
        if color is None:
            return None
        group = sorted((k, r) for c, k, r in everyone if c == me[0])
        local = [r for _, r in group]
        uid = f"{self._uid}.{self._splits}.{me[0]}"
        store = dist.PrefixStore(f"mlscale/{uid}/", dist.distributed_c10d._get_default_store())
        pg = dist.ProcessGroupGloo(store, local.index(self.rank), len(local), timedelta(seconds=timeout_seconds()))
        sub = TorchComm.__new__(TorchComm)
        sub._torch, sub._dist = self._torch, dist
        Communicator.__init__(sub, local.index(self.rank), len(local), np)
        sub._pg, sub.check = pg, self.check
        sub._members = [self._members[r] for r in local]
        sub._uid, sub._splits, sub._seq = uid, 0, [0] * len(local)
        sub._t0, sub._board = self._t0, self._board
        return sub

    def abort(self, code=1):
        """Stop this process at once (the launcher then stops the others)."""
        os._exit(code)


# ---------------------------------------------------------------- gloo's own collectives
def _fallback(name, comm, x, *args):
    algo = default_algorithm(name, comm, x)
    return ALGORITHMS[name][algo](comm, x, *args)


def _t(comm, a):
    return comm._torch.from_numpy(a)


def _native_all_reduce(comm, x, op, out=None):
    if x.dtype not in _GLOO_REDUCE:
        return _fallback("all_reduce", comm, x, op)
    dist = comm._dist
    fits = (out is not None and out.flags.c_contiguous and out.shape == x.shape and out.dtype == x.dtype
            and (op != "mean" or x.dtype.kind in "fc"))
    if fits and out is x:  # in place
        y = out
    elif fits and not np.shares_memory(out, x):
        y = out
        y[...] = x
    else:
        y = np.array(x, order="C", copy=True)
    opts = dist.AllreduceOptions()
    opts.reduceOp = _op(dist, op)
    comm._wait_works([comm._pg.allreduce([_t(comm, y.reshape(-1))], opts)], "all_reduce (gloo's own)")
    return finish(y, op, comm.world_size)


_native_all_reduce.accepts_out = True


def _native_broadcast(comm, x, root):
    dist = comm._dist
    y = np.array(x, order="C", copy=True) if comm.rank == root else np.empty_like(x, order="C")
    opts = dist.BroadcastOptions()
    opts.rootRank = root
    comm._wait_works([comm._pg.broadcast([_t(comm, y.reshape(-1).view(np.uint8))], opts)], "broadcast (gloo's own)")
    return y


def _native_reduce(comm, x, root, op):
    if x.dtype not in _GLOO_REDUCE:
        return _fallback("reduce", comm, x, root, op)
    dist = comm._dist
    y = np.array(x, order="C", copy=True)
    opts = dist.ReduceOptions()
    opts.rootRank, opts.reduceOp = root, _op(dist, op)
    comm._wait_works([comm._pg.reduce([_t(comm, y.reshape(-1))], opts)], "reduce (gloo's own)")
    return finish(y, op, comm.world_size) if comm.rank == root else None


def _native_all_gather(comm, x, counts):
    if len(set(int(c) for c in counts)) != 1:  # gloo's allgather takes equal pieces
        return _fallback("all_gather", comm, x, counts)
    xc = np.ascontiguousarray(x)
    if not xc.flags.writeable:  # e.g. np.frombuffer: torch.from_numpy warns on read-only arrays
        xc = xc.copy()
    outs = [np.empty_like(xc) for _ in range(comm.world_size)]
    comm._wait_works([comm._pg.allgather([[_t(comm, o.reshape(-1).view(np.uint8)) for o in outs]],
                                         [_t(comm, xc.reshape(-1).view(np.uint8))])], "all_gather (gloo's own)")
    return np.concatenate(outs)


_NATIVE = {
    "all_reduce": _native_all_reduce,
    "broadcast": _native_broadcast,
    "reduce": _native_reduce,
    "all_gather": _native_all_gather,
}


def launch_torch(fn, world_size, args=(), device="cpu", timeout=None, **kwargs):
    """Run ``fn(comm, *args)`` on ``world_size`` processes joined by a gloo process group
    (``device="gpu"``: NCCL, one GPU per rank, CuPy arrays); return the results by rank.
    The processes are started (and their faults reported) by :mod:`mlscale.comm._mpi_launch`,
    as for ``backend="mpi"``."""
    from ._mpi_launch import launch_processes

    torch, dist = _torch()
    if device == "gpu":
        from .torch_nccl import check_gpu_world, gpu_requirements

        gpu_requirements(torch, dist)  # fail here, clearly, rather than in every rank
        check_gpu_world(torch, world_size)
        return launch_processes(fn, world_size, args, engine="torch", timeout=timeout,
                                comm_kwargs={"device": "gpu"}, **kwargs)
    if device not in ("cpu", None):
        raise CommError(f"backend='torch': device={device!r}; use device='cpu' (gloo) or device='gpu' (NCCL)")
    return launch_processes(fn, world_size, args, engine="torch", timeout=timeout, **kwargs)


__all__ = ["TorchComm", "launch_torch"]
