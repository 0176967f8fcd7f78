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

Files: this one (the communicator, point to point); ``_torch_wire.py`` (what device="gpu"
needs, arrays <-> tensors, streams); ``_torch_payload.py`` (the payload group's collectives).
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import numpy as np

from ._mpi_state import board, board_text
from ._torch_payload import NATIVE as _NATIVE
from ._torch_wire import (_HostWire, _CudaWire, _bytes, _coalesces, check_gpu_world,  # noqa: F401
                          gpu_requirements, local_gpu)
from .base import ANY_SOURCE, Communicator
from .errors import CommError
from .torch_dist import (_HDR, _SEQ_WRAP, TorchComm, _check_sendable, _header, _init_default_group, _read_header,
                         _torch, timeout_seconds)


from .nccl import _NcclRequest  # noqa: E402 (imports no cupy)

# ---------------------------------------------------------------- point to point
class _Op:
    __slots__ = ("kind", "peer", "tag", "buf", "out", "hdr", "hwork", "done", "result", "error")

    def __init__(self, kind, peer, tag, buf=None, out=None, hdr=None, hwork=None):
        self.kind, self.peer, self.tag, self.buf, self.out, self.hdr, self.hwork = kind, peer, tag, buf, out, hdr, hwork
        self.done, self.result, self.error = False, None, None


_Req = _NcclRequest  # the same request: wait() posts the queued batch, as on the nccl engine


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


__all__ = ["TorchTwoGroupComm", "gpu_requirements", "check_gpu_world", "local_gpu"]
