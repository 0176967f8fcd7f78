"""``TorchComm(device="gpu")``: the torch engine on GPUs, NCCL with a gloo group beside it.

    ms.launch(program, world_size=2, backend="torch", device="gpu")   # 2 GPUs
    # or:  torchrun --nproc-per-node 2 script.py   with   comm = ms.comm.TorchComm(device="gpu")

NCCL carries only tensors on the GPU, so a rank holds two process groups over the same
store (torch.distributed's rendezvous):

- the *control* group, gloo on the CPU (``dist.new_group(backend="gloo")``): every
  message's header (dtype, shape, bytes, a per-pair sequence number, sent with the
  user's tag), the cross-rank argument check of collectives, ``split``'s exchange and
  ``barrier``;
- the *payload* group, NCCL (the default group, ``init_process_group("nccl",
  device_id=cuda:LOCAL_RANK)``): the arrays themselves, point to point and NCCL's own
  collectives for ``algorithm=None``: all_reduce, broadcast, reduce, all_gather
  (``all_gather_into_tensor``), reduce_scatter (``reduce_scatter_tensor``), all_to_all
  (``all_to_all_single``). Uneven all_gather/reduce_scatter pieces are padded to the
  largest, as on the ``nccl`` engine; dtypes NCCL cannot reduce (bool, int16, uint16/32/64,
  complex) and gather/scatter run mlscale's algorithm over send/recv.

Arrays. CuPy arrays on this rank's GPU (GPU ``LOCAL_RANK``) go in and come out:
``comm.xp`` is cupy, and a NumPy array passed in is copied to the GPU first, as on the
``nccl`` engine (a CuPy array on another GPU is refused, naming both). They reach torch
without a copy through DLPack (``torch.from_dlpack(cupy_array)``): NCCL reads and
writes the CuPy buffers themselves.

Streams. torch issues NCCL work on its own stream. Before an operation this rank's
current CuPy stream is synchronised (the inputs are written); after it, ``work.wait()``
puts torch's current stream behind NCCL's and that stream is synchronised: every call
returns with its bytes in place (as on the ``nccl`` engine), so buffers may be reused or
read on any stream at once.

Point to point. NCCL has no tags and matches the messages between two ranks in the
order they were posted, and a send and a receive between the same two ranks posted one
after the other deadlock. So, as the ``nccl`` engine does, headers go at once over
gloo; ``isend``/``irecv`` queue their payloads, and the first ``wait()`` posts every
queued one in one coalesced batch (what ``torch.distributed.batch_isend_irecv`` does for
NCCL: ``_start_coalescing`` ... ``_end_coalescing``, one ncclGroupStart/End): a
``sendrecv`` round a ring cannot deadlock. Receiving a later message of a pair before an
earlier one raises CommError (NCCL would pair the wrong payloads); a collective, a
barrier and a split first complete the queued point-to-point requests.

``TorchComm(two_groups=True)`` (device "cpu") runs this very code with a second gloo
group as the payload group and NumPy arrays through DLPack (``torch.from_dlpack`` on a
NumPy array): the GPU path's headers, queue, batches, padding and groups, tested on a
machine without a GPU (tests/test_torch_nccl.py). What only a GPU shows (NCCL's
coalescing, streams, CuPy's DLPack) is UNTESTED so far: the machine this was written on
has none; ``tools/gpu_check_torch_nccl.sh`` runs the GPU tests where one is.
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
from .torch_dist import (_GLOO_REDUCE, _HDR, _SEQ_WRAP, TorchComm, _check_sendable, _header, _init_default_group,
                         _op, _read_header, _torch, timeout_seconds)

_CUDA_WHEEL = "pip install torch --index-url https://download.pytorch.org/whl/cu126"
#: dtypes torch's ProcessGroupNCCL reduces (the rest run mlscale's algorithm)
_NCCL_REDUCE = {np.dtype(t) for t in ("i1", "u1", "i4", "i8", "f2", "f4", "f8")}


# ---------------------------------------------------------------- what device="gpu" needs
def gpu_requirements(torch, dist):
    """CuPy, where ``device="gpu"`` can run; otherwise BackendUnavailable naming what is
    missing and the fix, checked in this order: a CUDA GPU torch can use, NCCL in this
    torch build, CuPy."""
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BackendUnavailable(
            f"backend='torch', device='gpu' needs a CUDA GPU that PyTorch can use, and torch.cuda.is_available() "
            f"is False (torch {torch.__version__}, {build}). On a GPU machine install a CUDA build of torch "
            f"({_CUDA_WHEEL}) and check that nvidia-smi lists the GPUs; without a GPU use device='cpu' (gloo)")
    if not dist.is_nccl_available():
        raise BackendUnavailable(
            f"backend='torch', device='gpu' needs NCCL, and this PyTorch ({torch.__version__}) was built without it "
            "(torch.distributed.is_nccl_available() is False: Linux CUDA wheels have NCCL, Windows and macOS ones "
            f"do not). Install a Linux CUDA build ({_CUDA_WHEEL}), or use device='cpu' (gloo)")
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        major = (torch.version.cuda or "12").split(".")[0]
        raise BackendUnavailable(
            f"backend='torch', device='gpu' hands CuPy arrays in and out, and CuPy cannot be imported "
            f"({type(e).__name__}: {e}): pip install cupy-cuda{major}x (CUDA {major}, as this torch), or "
            'pip install "mlscale[gpu]"') from None
    return cupy


def check_gpu_world(torch, world_size):
    """ms.launch on one machine: one GPU for every rank, or BackendUnavailable."""
    n = torch.cuda.device_count()
    if world_size > n:
        raise BackendUnavailable(
            f"backend='torch', device='gpu': world_size={world_size} but this machine has {n} GPU(s), and NCCL "
            f"needs a GPU of its own for every rank; use world_size <= {n}, or backend='sim', device='gpu' "
            "(N logical GPUs on one device)")


def local_gpu(torch, rank):
    """This rank's GPU: $LOCAL_RANK (torchrun and ms.launch set it; else the rank), checked
    against the GPUs of this node."""
    local = int(os.environ.get("LOCAL_RANK", rank))
    n = torch.cuda.device_count()
    if local >= n:
        raise BackendUnavailable(
            f"backend='torch', device='gpu': rank {rank} is local rank {local} on its node, which has {n} GPU(s), "
            f"and NCCL needs a GPU of its own for every rank: start at most {n} ranks per node "
            f"(torchrun --nproc-per-node {n}), or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
    return local


# ---------------------------------------------------------------- arrays <-> tensors
class _HostWire:
    """NumPy arrays as CPU tensors through DLPack, the payload group gloo: the two-group
    path on a machine without a GPU."""

    name = "gloo"
    reducible = _GLOO_REDUCE

    def __init__(self, torch):
        self.torch, self.xp, self.device, self.index = torch, np, torch.device("cpu"), None

    def tensor(self, a):
        return self.torch.from_dlpack(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def asarray(self, x, comm):  # None: Communicator._as_array's NumPy rules
        return None

    def into(self, out, buf):
        out[...] = buf

    def before(self):
        pass

    def after(self):
        pass

    def payload_group(self, dist, store, rank, size):
        return dist.ProcessGroupGloo(store, rank, size, timedelta(seconds=timeout_seconds()))


class _CudaWire(_HostWire):
    """CuPy arrays on GPU ``index`` as CUDA tensors through DLPack, the payload group NCCL."""

    name = "NCCL"
    reducible = _NCCL_REDUCE

    def __init__(self, torch, cupy, index):
        self.torch, self.cupy, self.xp, self.index = torch, cupy, cupy, int(index)
        self.device = torch.device("cuda", self.index)

    def empty(self, shape, dtype):
        with self.cupy.cuda.Device(self.index):
            return self.cupy.empty(shape, dtype)

    def zeros(self, shape, dtype):
        with self.cupy.cuda.Device(self.index):
            return self.cupy.zeros(shape, dtype)

    def asarray(self, x, comm):
        cp = self.cupy
        if isinstance(x, cp.ndarray):
            if x.device.id != self.index:
                raise CommError(f"{comm._describe()}: an array on GPU {x.device.id}, and this rank's GPU is "
                                f"{self.index}; copy it first (cupy.asarray(x) inside cupy.cuda.Device({self.index}))")
            return x
        with cp.cuda.Device(self.index):  # NumPy (and anything array-like): copied to this rank's GPU
            return cp.asarray(x)

    def into(self, out, buf):
        out[...] = buf if isinstance(out, self.cupy.ndarray) else buf.get()

    def before(self):
        self.cupy.cuda.get_current_stream().synchronize()

    def after(self):
        self.torch.cuda.current_stream(self.device).synchronize()

    def payload_group(self, dist, store, rank, size):
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timedelta(seconds=timeout_seconds())
        opts.is_high_priority_stream = False
        return dist.ProcessGroupNCCL(store, rank, size, opts)


def _bytes(a):
    return a.reshape(-1).view(np.uint8)


def _coalesces(pg, device):
    """Whether ``pg`` batches point-to-point calls (NCCL does; gloo posts each at once)."""
    backend = pg
    if hasattr(pg, "_get_backend"):
        try:
            backend = pg._get_backend(device)
        except Exception:  # noqa: BLE001 - no backend for this device: no batching
            return False
    return bool(getattr(backend, "supports_coalescing", False))


# ---------------------------------------------------------------- point to point
class _Op:
    __slots__ = ("kind", "peer", "tag", "buf", "out", "hdr", "hwork", "done", "result", "error")

    def __init__(self, kind, peer, tag, buf=None, out=None, hdr=None, hwork=None):
        self.kind, self.peer, self.tag, self.buf, self.out, self.hdr, self.hwork = kind, peer, tag, buf, out, hdr, hwork
        self.done, self.result, self.error = False, None, None


class _Req(Request):
    def __init__(self, comm, op):
        self._comm, self._op = comm, op

    def wait(self):
        if not self._op.done:
            self._comm._flush()
        if self._op.error is not None:
            err, self._op.error = self._op.error, None
            raise err
        return self._op.result

    def test(self):
        """Completes the request (the queued batch is posted): NCCL point to point runs as a batch."""
        self.wait()
        return True


class TorchTwoGroupComm(TorchComm):
    """``TorchComm(device="gpu")`` (NCCL payloads, CuPy arrays) or ``TorchComm(two_groups=True)``
    (a second gloo group, NumPy arrays): a gloo *control* group for headers and checks, a
    *payload* group for the arrays (see the module's text)."""

    prefers_out = True

    def __init__(self, group=None, check=True, device="cpu", two_groups=True, _members=None, _uid="w"):
        if group is not None:
            raise CommError("TorchComm(device='gpu') and TorchComm(two_groups=True) make their own two process "
                            "groups (gloo for headers, NCCL or gloo for arrays) from the default one; pass no "
                            "group= (group= is for device='cpu', one gloo group)")
        if device not in ("cpu", "gpu", None):
            raise CommError(f"TorchComm(device={device!r}): use device='cpu' (gloo, NumPy arrays) or device='gpu' "
                            "(NCCL, CuPy arrays)")
        torch, dist = _torch()
        self._torch, self._dist = torch, dist
        if device == "gpu":
            cupy = gpu_requirements(torch, dist)
            index = local_gpu(torch, int(os.environ.get("RANK", dist.get_rank() if dist.is_initialized() else 0)))
            torch.cuda.set_device(index)
            cupy.cuda.Device(index).use()
            wire, payload = _CudaWire(torch, cupy, index), "nccl"
        else:
            wire, payload = _HostWire(torch), "gloo"
        if not dist.is_initialized():
            _init_default_group(dist, payload, wire.device if device == "gpu" else None)
        default = dist.distributed_c10d._get_default_group()
        kind = str(dist.get_backend())
        timeout = timedelta(seconds=timeout_seconds())
        if device == "gpu" and "nccl" in kind:  # "nccl", or "cpu:gloo,cuda:nccl"
            data, control = default, dist.new_group(backend="gloo", timeout=timeout)
        elif kind == "gloo":
            control, data = default, dist.new_group(backend=payload, timeout=timeout)
        else:
            raise CommError(f"TorchComm(device={device!r}): the default process group is {kind!r}; this engine "
                            f"needs gloo{' or NCCL' if device == 'gpu' else ''} there")
        self._setup(control, data, wire, check, None, _uid, time.perf_counter(), board())

    def _setup(self, control, data, wire, check, members, uid, t0, board_):
        Communicator.__init__(self, control.rank(), control.size(), wire.xp)
        p = self.world_size
        self._pg, self._data, self._wire = control, data, wire
        self.check = bool(check)
        self.device = wire.index  # the GPU index (None on the CPU)
        self._members = list(range(p)) if members is None else list(members)  # world ranks
        self._uid, self._splits = uid, 0
        self._sseq, self._rseq = [0] * p, [0] * p  # messages sent to / received from each rank
        self._stash: dict = {}  # (src, tag) -> headers read by a receive that came too soon
        self._queue: list = []
        self._own: dict = {}  # tag -> the messages this rank sent itself, oldest first
        self._t0, self._board = t0, board_
        # every rank of the payload group together, once: NCCL makes its communicator here,
        # not at a first point-to-point message between two ranks only
        one = wire.zeros(1, np.int32)
        t = wire.tensor(one)
        self._post(f"starting the {wire.name} payload group", lambda: data.allreduce([t]))

    @property
    def process_group(self):
        """The payload ProcessGroup (NCCL on GPUs): the one to give torch DDP or FSDP."""
        return self._data

    @property
    def control_group(self):
        """The gloo ProcessGroup of the headers and argument checks."""
        return self._pg

    def _as_array(self, x, what="x", numeric=True):
        a = self._wire.asarray(x, self)
        if a is None:
            return super()._as_array(x, what, numeric)
        if a.dtype == object or (numeric and a.dtype.kind not in "biufc"):  # as Communicator._as_array
            raise CommError(f"{self._describe()}: {what} must be a numeric array (bool, int, float or complex), "
                            f"got dtype={a.dtype}")
        return a if a.flags.c_contiguous else self.xp.ascontiguousarray(a)

    # ------------------------------------------------------------------ waiting
    def _enter_peers(self, what, peers):
        if self._board is None:
            return
        if self._label:
            what = f"{self._label} (collective #{self._coll_seq}): {what}"
        self._board.enter_text(board_text(what, sorted({self._members[q] for q in peers}), "all"))

    def _post(self, what, post):
        """Complete the queued point to point, then ``post()`` one payload-group operation
        and wait until its bytes are in place (streams: see the module's text)."""
        self._flush()
        self._wire.before()
        self._enter(what)
        try:
            self._finish([post()], what, on=self._wire.name)
            self._wire.after()
        finally:
            self._leave()

    # ------------------------------------------------------------------ point to point
    def _queue_send(self, buf, dst, tag):
        _check_sendable(self, buf)
        if dst == self.rank:  # to itself: kept here (neither gloo nor NCCL pairs a rank with itself)
            self._own.setdefault(tag, []).append(buf.copy())
            op = _Op("send", dst, tag)
            op.done = True
            return _Req(self, op)
        seq = self._sseq[dst]
        self._sseq[dst] = (seq + 1) % _SEQ_WRAP
        hdr = _header(self._torch, buf, seq)
        op = _Op("send", dst, tag, buf=buf, hdr=hdr, hwork=self._pg.send([hdr], dst, tag))
        self._queue.append(op)
        return _Req(self, op)

    def _isend(self, buf, dst, tag):  # a snapshot: the caller may write x before wait()
        return self._queue_send(buf.copy(), dst, tag)

    def _isend_given(self, buf, dst, tag):
        return self._queue_send(buf, dst, tag)

    def _send(self, buf, dst, tag):
        self._queue_send(buf, dst, tag).wait()

    def _irecv(self, src, tag, out):
        stashed = self._stash.get((src, tag))
        if src == self.rank:  # from itself: taken from what it sent itself, when waited for
            op = _Op("self", src, tag, out=out)
        elif stashed:
            op = _Op("recv", src, tag, out=out, hdr=stashed.pop(0))
        else:
            hdr = self._torch.zeros(_HDR, dtype=self._torch.int64)
            op = _Op("recv", src, tag, out=out, hdr=hdr, hwork=self._pg.recv([hdr], src, tag))
        self._queue.append(op)
        return _Req(self, op)

    def _recv(self, src, tag, out):
        return self._irecv(src, tag, out).wait()

    def recv_any(self, tag=0, out=None):
        """Receive from whichever rank's header comes first: returns ``(source rank, array)``."""
        tag = self._check_tag(tag)
        for (src, t), stashed in self._stash.items():
            if t == tag and stashed:
                return src, self._recv(src, tag, out)
        hdr = self._torch.zeros(_HDR, dtype=self._torch.int64)
        w = self._pg.recv_anysource([hdr], tag)
        self._enter("recv from", ANY_SOURCE, tag)
        try:
            self._finish([w], "recv_any", on="gloo")
        finally:
            self._leave()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = int(w.source_rank())
        del w
        op = _Op("recv", src, tag, out=out, hdr=hdr)
        self._queue.append(op)
        return src, _Req(self, op).wait()

    def _open(self, op):
        """A receive's header is in: check the order, allocate (or check) its buffer."""
        dtype, shape, nbytes, seq = _read_header(op.hdr)
        want = self._rseq[op.peer]
        if seq != want:  # keep the header for the next receive on this tag; nothing moves
            self._stash.setdefault((op.peer, op.tag), []).append(op.hdr)
            op.error = CommError(
                f"{self._describe()}: recv(src={op.peer}, tag={op.tag}) matched rank {op.peer}'s message #{seq}, "
                f"but its message #{want} (another tag) is not received yet: NCCL delivers the messages between "
                "two ranks in the order they were sent; receive them in that order (this receive can be "
                "repeated afterwards)")
            return
        self._rseq[op.peer] = (seq + 1) % _SEQ_WRAP
        out = op.out
        if out is not None and (tuple(out.shape) != shape or np.dtype(out.dtype) != dtype):
            op.error = CommError(
                f"{self._describe()}: recv(out=) from rank {op.peer} (tag {op.tag}): the message is shape {shape} "
                f"{dtype}, out= is shape {tuple(out.shape)} {out.dtype}; pass an out= of the sent shape and dtype, "
                "or none")
            out = None  # the payload is still received, so the sender completes
        if out is not None and out.flags.c_contiguous and isinstance(out, self.xp.ndarray):
            op.buf = out
        else:
            op.buf = self._wire.empty(shape, dtype)

    def _from_itself(self, op):
        mine = self._own.get(op.tag)
        if not mine:
            op.error = CommError(f"{self._describe()}: recv(src={op.peer}, tag={op.tag}) from itself, and this rank "
                                 "sent itself nothing on that tag before waiting; send first (isend, or sendrecv)")
            return
        op.buf = mine.pop(0)
        out = op.out
        if out is not None and (tuple(out.shape) != tuple(op.buf.shape) or out.dtype != op.buf.dtype):
            op.error = CommError(
                f"{self._describe()}: recv(out=) from rank {op.peer} (tag {op.tag}): the message is shape "
                f"{tuple(op.buf.shape)} {op.buf.dtype}, out= is shape {tuple(out.shape)} {out.dtype}; pass an out= "
                "of the sent shape and dtype, or none")

    def _flush(self):
        """Post every queued payload as one batch on the payload group, then wait for it."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            for op in queue:
                if op.kind == "self":
                    self._from_itself(op)
                elif op.kind == "recv":
                    if op.hwork is not None:
                        self._enter("recv from", op.peer, op.tag)
                        try:
                            self._finish([op.hwork], f"recv from rank {op.peer} (tag {op.tag}): its header",
                                         on="gloo")
                        finally:
                            self._leave()
                        op.hwork = None
                    self._open(op)
            moves = [op for op in queue if op.kind != "self" and op.buf is not None and op.buf.nbytes]
            if moves:
                self._batch(moves)
            for op in queue:
                if op.kind == "send" and op.hwork is not None:
                    self._finish([op.hwork], f"send to rank {op.peer} (tag {op.tag}): its header", on="gloo")
        finally:
            for op in queue:
                op.done = True
                op.hwork = None
        for op in queue:
            if op.kind in ("recv", "self") and op.error is None:
                if op.out is not None and op.buf is not op.out:
                    self._wire.into(op.out, op.buf)
                    op.result = op.out
                else:
                    op.result = op.buf
            op.buf = op.hdr = None

    def _batch(self, moves):
        """One batch of sends and receives (batch_isend_irecv's way: coalesced where the
        payload group can, NCCL; else posted one by one, gloo)."""
        pg, wire = self._data, self._wire
        tensors = [wire.tensor(_bytes(op.buf)) for op in moves]
        sends = [op.peer for op in moves if op.kind == "send"]
        recvs = [op.peer for op in moves if op.kind == "recv"]
        what = f"point to point over {wire.name} (sends to ranks {sends}, receives from ranks {recvs})"
        wire.before()
        coalesce = _coalesces(pg, wire.device)
        works = []
        self._enter_peers(what, sends + recvs)
        try:
            if coalesce:
                pg._start_coalescing(wire.device)
            try:
                for op, t in zip(moves, tensors):
                    works.append(pg.send([t], op.peer, 0) if op.kind == "send" else pg.recv([t], op.peer, 0))
            finally:
                if coalesce:
                    works = [pg._end_coalescing(wire.device)]
            self._finish([w for w in works if w is not None], what, on=wire.name)
            wire.after()
        finally:
            self._leave()
        del tensors

    # ------------------------------------------------------------------ engine hooks
    def _native(self, name):
        return _NATIVE.get(name)

    def barrier(self):
        self._flush()
        self._wire.after()
        super().barrier()

    def split(self, color, key=None):
        """Sub-communicators, as MPI_Comm_split: ranks with the same ``color`` form one,
        ordered by ``key`` (default: rank); ``color=None`` gives None. Each has its own
        control (gloo) and payload (NCCL or gloo) group under a prefix of the world's store."""
        self._flush()
        dist = self._dist
        me = (None if color is None else int(color), self.rank if key is None else int(key), self.rank)
        everyone = self._gather_objects(me, "split")
        self._splits += 1
        if color is None:
            return None
        local = [r for _, r in sorted((k, r) for c, k, r in everyone if c == me[0])]
        uid = f"{self._uid}.{self._splits}.{me[0]}"
        root = dist.distributed_c10d._get_default_store()
        i, n = local.index(self.rank), len(local)
        control = dist.ProcessGroupGloo(dist.PrefixStore(f"mlscale/{uid}/control/", root), i, n,
                                        timedelta(seconds=timeout_seconds()))
        data = self._wire.payload_group(dist, dist.PrefixStore(f"mlscale/{uid}/payload/", root), i, n)
        sub = TorchTwoGroupComm.__new__(TorchTwoGroupComm)
        sub._torch, sub._dist = self._torch, dist
        sub._setup(control, data, self._wire, self.check, [self._members[r] for r in local], uid, self._t0,
                   self._board)
        return sub


# ---------------------------------------------------------------- the payload group's own collectives
def _fallback(name, comm, x, *args):
    return ALGORITHMS[name][default_algorithm(name, comm, x)](comm, x, *args)


def _own(comm):
    return f"({comm._wire.name}'s own)"


def _all_reduce(comm, x, op):
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("all_reduce", comm, x, op)
    dist = comm._dist
    y = x.copy()
    opts = dist.AllreduceOptions()
    opts.reduceOp = _op(dist, op)
    if y.size:
        t = comm._wire.tensor(y.reshape(-1))
        comm._post(f"all_reduce {_own(comm)}", lambda: comm._data.allreduce([t], opts))
    else:
        comm._flush()
    return finish(y, op, comm.world_size)


def _broadcast(comm, x, root):
    y = x.copy() if comm.rank == root else comm._wire.empty(x.shape, x.dtype)
    dist = comm._dist
    opts = dist.BroadcastOptions()
    opts.rootRank = root
    if y.nbytes:
        t = comm._wire.tensor(_bytes(y))
        comm._post(f"broadcast {_own(comm)}", lambda: comm._data.broadcast([t], opts))
    else:
        comm._flush()
    return y


def _reduce(comm, x, root, op):
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("reduce", comm, x, root, op)
    dist = comm._dist
    y = x.copy()
    opts = dist.ReduceOptions()
    opts.rootRank, opts.reduceOp = root, _op(dist, op)
    if y.size:
        t = comm._wire.tensor(y.reshape(-1))
        comm._post(f"reduce {_own(comm)}", lambda: comm._data.reduce([t], opts))
    else:
        comm._flush()
    return finish(y, op, comm.world_size) if comm.rank == root else None


def _all_gather(comm, x, counts):
    """all_gather_into_tensor on the bytes, each piece padded to the widest."""
    xp, p, wire = comm.xp, comm.world_size, comm._wire
    row = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    nb = [int(c) * row * x.dtype.itemsize for c in counts]
    width = max(nb) if nb else 0
    send = _bytes(x)
    if send.size < width:
        padded = wire.zeros(width, np.uint8)
        padded[: send.size] = send
        send = padded
    recv = wire.empty(p * width, np.uint8)
    if width:
        ts, tr = wire.tensor(send), wire.tensor(recv)
        comm._post(f"all_gather {_own(comm)}", lambda: comm._data._allgather_base(tr, ts))
    else:
        comm._flush()
    flat = recv if all(b == width for b in nb) else xp.concatenate([recv[i * width: i * width + nb[i]]
                                                                     for i in range(p)])
    return flat.view(x.dtype).reshape((int(sum(counts)),) + tuple(x.shape[1:]))


def _reduce_scatter(comm, x, op):
    """reduce_scatter_tensor; chunks as np.array_split, uneven ones padded to the widest."""
    if np.dtype(x.dtype) not in comm._wire.reducible:
        return _fallback("reduce_scatter", comm, x, op)
    dist, wire, p, r = comm._dist, comm._wire, comm.world_size, comm.rank
    flat = x.reshape(-1)
    q, extra = divmod(flat.size, p)
    counts = [q + 1 if i < extra else q for i in range(p)]
    width = max(counts) if flat.size else 0
    if extra:  # equal pieces for NCCL: each padded to the widest (the padding is dropped after)
        send = wire.zeros(p * width, x.dtype)
        off = 0
        for i, c in enumerate(counts):
            send[i * width: i * width + c] = flat[off: off + c]
            off += c
    else:
        send = flat
    y = wire.empty(width, x.dtype)
    opts = dist.ReduceScatterOptions()
    opts.reduceOp = _op(dist, op)
    if width:
        ts, ty = wire.tensor(send), wire.tensor(y)
        comm._post(f"reduce_scatter {_own(comm)}", lambda: comm._data._reduce_scatter_base(ty, ts, opts))
    else:
        comm._flush()
    return finish(y[: counts[r]].copy() if extra else y, op, p)


def _all_to_all(comm, pieces, counts):
    """all_to_all_single on the bytes, with the agreed counts as split sizes."""
    xp, wire, p, r = comm.xp, comm._wire, comm.world_size, comm.rank
    rows, dt = tuple(pieces[0].shape[1:]), pieces[0].dtype
    rowbytes = int(np.prod(rows)) * dt.itemsize
    send_sizes = [int(counts[r][j]) * rowbytes for j in range(p)]
    recv_sizes = [int(counts[j][r]) * rowbytes for j in range(p)]
    send = (xp.concatenate([_bytes(xp.ascontiguousarray(a)) for a in pieces]) if sum(send_sizes)
            else wire.empty(0, np.uint8))
    recv = wire.empty(sum(recv_sizes), np.uint8)
    if any(int(c) for row_ in counts for c in row_) and rowbytes:
        dist = comm._dist
        ts, tr = wire.tensor(send), wire.tensor(recv)
        comm._post(f"all_to_all {_own(comm)}",
                   lambda: comm._data.alltoall_base(tr, ts, recv_sizes, send_sizes, dist.AllToAllOptions()))
    else:
        comm._flush()
    got, off = [], 0
    for j in range(p):
        got.append(recv[off: off + recv_sizes[j]].view(dt).reshape((int(counts[j][r]),) + rows))
        off += recv_sizes[j]
    return got


_NATIVE = {
    "all_reduce": _all_reduce,
    "broadcast": _broadcast,
    "reduce": _reduce,
    "all_gather": _all_gather,
    "reduce_scatter": _reduce_scatter,
    "all_to_all": _all_to_all,
}

__all__ = ["TorchTwoGroupComm", "gpu_requirements", "check_gpu_world", "local_gpu"]
