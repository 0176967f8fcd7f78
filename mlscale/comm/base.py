"""The Communicator API, shared by every engine (``sim``, ``mpi``, ``nccl``).

An engine implements a handful of primitives (``_send``, ``_recv``, ``_isend``,
``_irecv``, ``barrier``, ``split``, ``_agree``); everything else, the collectives
above all, is written once here on top of them, in :mod:`mlscale.collectives`.

Names follow torch.distributed / MPI / JAX:

=================  ==================  =====================
mlscale            MPI                 JAX
=================  ==================  =====================
all_reduce         MPI_Allreduce       psum
reduce_scatter     MPI_Reduce_scatter  psum_scatter
all_gather         MPI_Allgather(v)    all_gather
broadcast          MPI_Bcast           (replicate)
sendrecv (ring)    MPI_Sendrecv        ppermute
=================  ==================  =====================
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..collectives import ALGORITHMS, default_algorithm
from ..collectives._p2p import MAX_TAG
from ..collectives._reduce_ops import check_op, get_xp
from .errors import CommError

ANY_SOURCE = -1


class Request:
    """Handle of a non-blocking ``isend``/``irecv``. ``wait()`` completes it and
    returns the received array (``irecv``) or None (``isend``)."""

    def wait(self):  # pragma: no cover - engines override
        raise NotImplementedError

    def test(self) -> bool:  # pragma: no cover
        raise NotImplementedError


class _Done(Request):
    def __init__(self, value):
        self.value = value

    def wait(self):
        return self.value

    def test(self):
        return True


def wait_all(requests):
    """Wait for every request; return their results in order."""
    return [r.wait() for r in requests]


class Communicator:
    """A group of ``world_size`` ranks. ``rank`` is this rank's index in the group.

    Collectives take ``algorithm=None`` (the engine's own: MPI's or NCCL's; on
    ``sim`` a choice by size, as MPICH makes it) or a name from
    :data:`mlscale.collectives.ALGORITHMS`, which runs mlscale's implementation
    written on ``send``/``recv`` alone.
    """

    backend = "base"
    #: True where receiving into a buffer you own is cheapest (MPI, NCCL); False on
    #: sim, where a received message is a buffer handed over without a copy
    prefers_out = True

    def __init__(self, rank: int, world_size: int, xp=np):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.xp = xp
        self.nbytes_sent = 0
        self.messages_sent = 0
        self._coll_seq = 0
        self._labels: list[str] = []
        self.check = True  # validate that every rank passes matching arguments

    # ------------------------------------------------------------------ engine hooks
    def _send(self, buf, dst, tag):  # pragma: no cover - engines implement
        raise NotImplementedError

    def _recv(self, src, tag, out):  # pragma: no cover
        raise NotImplementedError

    def _isend(self, buf, dst, tag) -> Request:  # pragma: no cover
        raise NotImplementedError

    def _irecv(self, src, tag, out) -> Request:  # pragma: no cover
        raise NotImplementedError

    def _isend_given(self, buf, dst, tag) -> Request:
        """isend of a buffer the caller gives away (never touches again): the sim engine
        then needs no snapshot. Real engines: a plain isend."""
        return self._isend(buf, dst, tag)

    def _agree(self, signature, extra=None) -> list:  # pragma: no cover
        """Exchange ``(signature, extra)`` with every rank (no modelled cost). Raise
        CommError naming the ranks if the signatures differ; return every rank's
        ``extra`` in rank order."""
        raise NotImplementedError

    def _agree_step(self, signature, extra=None) -> list:
        """``_agree`` counted as one step of the collective sequence, as a collective's own
        argument check is (split, uneven all-to-all counts, a layer's flags): the same
        numbering of collectives on every rank, in error messages too."""
        every = self._agree(signature, extra)
        self._coll_seq += 1
        return every

    def _native(self, name):
        """The engine's own implementation of collective ``name``, or None."""
        return None

    def _charge_reduce(self, nbytes):
        """Account for reducing ``nbytes`` (gamma in the cost model). Real engines: no-op."""

    def _release(self, arr):
        """A collective is done with a received buffer (the sim engine recycles it)."""

    def barrier(self):  # pragma: no cover
        raise NotImplementedError

    def split(self, color, key=None) -> "Communicator":  # pragma: no cover
        raise NotImplementedError

    def compute(self, seconds=None, flops=None, label="compute"):
        """Declare compute work. On ``sim`` it advances this rank's virtual clock
        (scaled by the rank's modelled speed); on real engines it does nothing:
        the work itself takes the time."""

    @property
    def clock(self) -> float:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _describe(self):
        return f"rank {self.rank} of {self.world_size} ({self.backend})"

    def _check_peer(self, peer, what):
        if type(peer) is int and 0 <= peer < self.world_size:  # the common case, first
            return peer
        if isinstance(peer, bool) or not isinstance(peer, (int, np.integer)) or not (0 <= peer < self.world_size):
            raise CommError(
                f"{self._describe()}: {what}={peer!r} is not a rank of this communicator; "
                f"use 0..{self.world_size - 1}"
            )
        return int(peer)

    def _check_tag(self, tag, internal=False):
        if internal or (type(tag) is int and 0 <= tag < MAX_TAG):
            return tag
        if not isinstance(tag, (int, np.integer)) or not (0 <= tag < MAX_TAG):
            raise CommError(f"{self._describe()}: tag={tag!r} must be an int in [0, {MAX_TAG})")
        return int(tag)

    def _as_array(self, x, what="x", numeric=True):
        """x as an array of the engine; collectives need numbers, a send any fixed-size
        dtype (strings and bytes travel as bytes; object arrays hold pointers, never)."""
        if type(x) is np.ndarray and x.flags.c_contiguous and x.dtype.kind in ("biufc" if numeric else "biufcSUmMV"):
            return x  # the common case, first
        xp = get_xp(x) if hasattr(x, "dtype") else self.xp
        a = xp.asarray(x)
        # collectives: no strings, bytes, datetimes or void (no sum or max of those)
        if a.dtype == object or (numeric and a.dtype.kind not in "biufc"):
            raise CommError(
                f"{self._describe()}: {what} must be a numeric array (bool, int, float or complex), "
                f"got dtype={a.dtype}; convert it first, e.g. np.asarray(x, dtype=float)")
        # (ascontiguousarray would turn a 0-d array into shape (1,))
        return a if a.flags.c_contiguous else xp.ascontiguousarray(a)

    @contextlib.contextmanager
    def label(self, text):
        """Label the messages sent inside this block (they show in the trace)."""
        self._labels.append(text)
        try:
            yield
        finally:
            self._labels.pop()

    @property
    def _label(self):
        return self._labels[-1] if self._labels else ""

    def _count(self, buf):
        self.nbytes_sent += int(buf.nbytes)
        self.messages_sent += 1

    def start(self, fn, *args) -> Request:
        """Run ``fn(comm, *args)`` in the background (on the sim engine: on this rank's
        communication stream, overlapping what the rank does next) and return a Request
        whose ``wait()`` returns fn's result. This engine runs it at once, in order:
        same results, no overlap."""
        return _Done(fn(self, *args))

    # ------------------------------------------------------------------ point to point
    def send(self, x, dst, tag=0, _internal=False):
        """Blocking send of array ``x`` to rank ``dst``. ``x`` may be reused on return."""
        dst = self._check_peer(dst, "dst")
        tag = self._check_tag(tag, _internal)
        buf = self._as_array(x, numeric=False)
        self._count(buf)
        self._send(buf, dst, tag)

    def recv(self, src, tag=0, out=None, _internal=False):
        """Blocking receive from rank ``src``; returns the array (written into ``out`` if given)."""
        src = self._check_peer(src, "src")
        tag = self._check_tag(tag, _internal)
        return self._recv(src, tag, out)

    def isend(self, x, dst, tag=0, _internal=False, _give=False) -> Request:
        """Non-blocking send; do not modify ``x`` before ``wait()``."""
        dst = self._check_peer(dst, "dst")
        tag = self._check_tag(tag, _internal)
        buf = self._as_array(x, numeric=False)
        self._count(buf)
        return self._isend_given(buf, dst, tag) if _give else self._isend(buf, dst, tag)

    def irecv(self, src, tag=0, out=None, _internal=False) -> Request:
        """Non-blocking receive; ``req.wait()`` returns the array."""
        src = self._check_peer(src, "src")
        tag = self._check_tag(tag, _internal)
        return self._irecv(src, tag, out)

    def sendrecv(self, x, dst, src, tag=0, out=None, _internal=False, _give=False):
        """Send ``x`` to ``dst`` and receive from ``src`` at the same time (no deadlock
        in a ring: every rank sends right and receives left). Returns what arrived."""
        rreq = self.irecv(src, tag, out, _internal=_internal)
        sreq = self.isend(x, dst, tag, _internal=_internal, _give=_give)
        try:
            return rreq.wait()
        finally:
            sreq.wait()

    # ------------------------------------------------------------------ collectives
    def _collective(self, name, x, op=None, algorithm=None, root=None, shape_key=None, extra=None):
        """Validate arguments, agree across ranks, pick the algorithm."""
        table = ALGORITHMS[name]
        if algorithm is not None and algorithm != "native" and algorithm not in table:
            raise CommError(
                f"{self._describe()}: unknown {name} algorithm {algorithm!r}; "
                f"choose one of {sorted(table)} or None for the engine's own"
            )
        if op is not None or name in ("all_reduce", "reduce_scatter", "reduce"):
            check_op(op)  # op=None is an error, not a KeyError deep in an algorithm
        if root is not None or name in ("broadcast", "reduce", "gather", "scatter"):
            root = self._check_peer(root, "root")
        sigs = None
        if self.check:
            shape = shape_key if shape_key is not None else (None if x is None else tuple(x.shape))
            dtype = None if x is None else x.dtype.str
            sig = (name, shape, dtype, op, algorithm, root)
            sigs = self._agree(sig, extra)
        self._coll_seq += 1
        if algorithm is None:
            native = self._native(name)
            if native is not None:
                return native, sigs
            algorithm = default_algorithm(name, self, x)
        elif algorithm == "native":
            native = self._native(name)
            if native is None:
                raise CommError(f"{self._describe()}: the {self.backend} engine has no native {name}")
            return native, sigs
        return _bind(table[algorithm], algorithm), sigs

    def _check_out(self, name, out):
        """out= of a collective: None or a writeable array (checked before any message
        moves; its shape and dtype are checked against the result by ``_into``)."""
        if out is None:
            return
        if not (hasattr(out, "shape") and hasattr(out, "dtype")) or isinstance(out, np.generic):
            raise CommError(
                f"{self._describe()}: {name}(out=...) must be an array to write the result into, "
                f"got {type(out).__name__}; pass e.g. np.empty_like(x), or no out= to get a new array")
        flags = getattr(out, "flags", None)
        if flags is not None and not getattr(flags, "writeable", True):
            raise CommError(f"{self._describe()}: {name}(out=...) is a read-only array; pass a writeable one")

    def _run(self, name, fn, *args):
        algo = getattr(fn, "algorithm", "native")
        labels = self._labels  # (self.label(), without a context manager: once per collective)
        labels.append(f"{name}/{algo}")
        try:
            return fn(self, *args)
        finally:
            labels.pop()

    def all_reduce(self, x, op="sum", algorithm=None, out=None):
        """Every rank gets op over all ranks' ``x`` (MPI_Allreduce, JAX psum). The
        reduction runs in ``x``'s dtype: an integer sum that overflows wraps around,
        as in MPI (int8 100 + 100 + 100 = 44); pass a wider dtype to avoid it."""
        x = self._as_array(x)
        fn, _ = self._collective("all_reduce", x, op, algorithm)
        if out is None:  # the common case, first
            return self._run("all_reduce", fn, x, op)
        self._check_out("all_reduce", out)
        fits = out is not None and tuple(out.shape) == tuple(x.shape) and out.dtype == x.dtype and (
            op != "mean" or x.dtype.kind in "fc")
        if fits and getattr(fn, "accepts_out", False):  # otherwise _into checks out= and says why
            return _into(out, self._run("all_reduce", fn, x, op, out))
        return _into(out, self._run("all_reduce", fn, x, op))

    def reduce_scatter(self, x, op="sum", algorithm=None, out=None):
        """Reduce over ranks, then rank r keeps chunk r of the flattened result,
        chunks as ``np.array_split(flat, world_size)`` (JAX psum_scatter)."""
        x = self._as_array(x)
        fn, _ = self._collective("reduce_scatter", x, op, algorithm)
        self._check_out("reduce_scatter", out)
        return _into(out, self._run("reduce_scatter", fn, x, op))

    def all_gather(self, x, algorithm=None, out=None):
        """Concatenate every rank's ``x`` along axis 0, in rank order (0-d arrays are
        stacked). Ranks may pass different lengths along axis 0 (MPI_Allgatherv)."""
        x = self._as_array(x)
        n0 = int(x.shape[0]) if x.ndim else 1
        fn, counts = self._collective(
            "all_gather", x, None, algorithm, shape_key=("*",) + tuple(x.shape[1:]) if x.ndim else (), extra=n0
        )
        if counts is None:  # validation off: assume equal lengths
            counts = [n0] * self.world_size
        self._check_out("all_gather", out)
        return _into(out, self._run("all_gather", fn, x, counts))

    def broadcast(self, x, root=0, algorithm=None, out=None):
        """Every rank gets root's ``x``. Non-root ranks must pass an array of the same
        shape and dtype (its values are ignored), as in MPI_Bcast."""
        x = self._as_array(x)
        fn, _ = self._collective("broadcast", x, None, algorithm, root)
        self._check_out("broadcast", out)
        return _into(out, self._run("broadcast", fn, x, root))

    def reduce(self, x, root=0, op="sum", algorithm=None, out=None):
        """op over all ranks' ``x``, delivered to ``root`` (into ``out`` if given: as
        MPI's recvbuf, it matters only at the root); other ranks get None."""
        x = self._as_array(x)
        fn, _ = self._collective("reduce", x, op, algorithm, root)
        self._check_out("reduce", out)
        y = self._run("reduce", fn, x, root, op)
        return None if y is None else _into(out, y)

    def gather(self, x, root=0, algorithm=None, out=None):
        """``root`` gets the list of every rank's ``x`` (shapes may differ); others get None.
        ``out``: at the root, an array of shape ``(world_size, *x.shape)`` to stack them
        into (then every rank must pass the same shape), returned instead of the list."""
        x = self._as_array(x)
        fn, _ = self._collective("gather", x, None, algorithm, root, shape_key=("any",))
        self._check_out("gather", out)
        got = self._run("gather", fn, x, root)
        if got is None or out is None:
            return got
        shapes = sorted({tuple(a.shape) for a in got})
        want = (self.world_size,) + (shapes[0] if len(shapes) == 1 else tuple(x.shape))
        if len(shapes) != 1 or tuple(out.shape) != want or out.dtype != got[0].dtype:
            raise CommError(
                f"{self._describe()}: gather(out=...) stacks the pieces: out= must be {want} "
                f"{got[0].dtype} and every rank's x the same shape; got out= {tuple(out.shape)} {out.dtype} "
                f"and pieces of shapes {shapes}. Pass no out= to get the list")
        for r, a in enumerate(got):
            out[r] = a
        return out

    def scatter(self, xs, root=0, algorithm=None, out=None):
        """``root`` passes a list of ``world_size`` arrays; rank r gets ``xs[r]`` (into
        ``out`` if given, of that piece's shape and dtype). Other ranks pass None."""
        self._check_out("scatter", out)
        return _into(out, self._scatter(xs, root, algorithm))

    def _scatter(self, xs, root, algorithm):
        root = self._check_peer(root, "root")
        if self.rank == root:
            if xs is None or len(xs) != self.world_size:
                n = None if xs is None else len(xs)
                raise CommError(
                    f"{self._describe()}: scatter root needs a list of {self.world_size} arrays, got {n}"
                )
            xs = [self._as_array(a) for a in xs]
        fn, _ = self._collective("scatter", None, None, algorithm, root)
        return self._run("scatter", fn, xs, root)

    # ------------------------------------------------------------------ all-to-all (issue 11)
    def all_to_all(self, xs, algorithm=None, split_sizes=None, out=None):
        """Rank i sends piece j of its input to rank j and gets back what every rank sent
        it, in rank order (MPI_Alltoall(v), torch ``all_to_all`` / ``all_to_all_single``,
        JAX ``all_to_all``): a transpose of the blocks, the collective of experts and Ulysses.

        - ``xs`` a list of ``world_size`` arrays (their lengths along axis 0 may differ,
          as in MPI_Alltoallv; trailing shape and dtype must match): returns the list of
          ``world_size`` arrays received, piece j from rank j.
        - ``xs`` one array: cut along axis 0 into ``world_size`` equal chunks, or into
          ``split_sizes`` rows (uneven); returns one array, the received pieces
          concatenated along axis 0 in rank order (``out=`` to receive into one).
          :meth:`all_to_all_v` also returns how many rows came from each rank.

        ``algorithm``: None (the engine's own: MPI_Alltoallv, NCCL grouped send/recv; on
        sim MPICH's choice by size), ``"pairwise"``, ``"bruck"`` or ``"linear"``
        (:mod:`mlscale.collectives.alltoall`)."""
        if isinstance(xs, (list, tuple)):
            if split_sizes is not None or out is not None:
                raise CommError(f"{self._describe()}: all_to_all of a list of pieces takes no split_sizes= "
                                "or out= (the pieces' lengths are the splits); pass one array to use them")
            pieces = [self._as_array(a, f"xs[{j}]") for j, a in enumerate(xs)]
            scalar = bool(pieces) and all(a.ndim == 0 for a in pieces)
            got, _ = self._all_to_all([a.reshape(1) for a in pieces] if scalar else pieces, algorithm)
            return [g.reshape(()) for g in got] if scalar else got
        y, _ = self.all_to_all_v(xs, split_sizes, algorithm=algorithm)
        return _into(out, y)

    def all_to_all_v(self, x, split_sizes=None, recv_split_sizes=None, algorithm=None):
        """Uneven all-to-all on one array (MPI_Alltoallv, torch ``all_to_all_single`` with
        ``input_split_sizes``): rows ``split_sizes[j]`` of ``x`` (axis 0, in order) go to
        rank j; None cuts ``x`` into ``world_size`` equal chunks. Returns ``(y, recv_sizes)``:
        the pieces received, concatenated in rank order, and how many rows came from each
        rank. ``recv_split_sizes``, if given, is checked against what the ranks send
        (a mismatch names both ranks, on every rank)."""
        x = self._as_array(x)
        p = self.world_size
        if x.ndim == 0:
            raise CommError(f"{self._describe()}: all_to_all needs an array with an axis 0 to cut into "
                            f"{p} pieces, got a 0-d array; pass a list of {p} arrays instead")
        n0 = int(x.shape[0])
        if split_sizes is None:
            if n0 % p:
                raise CommError(
                    f"{self._describe()}: all_to_all cuts axis 0 into {p} equal pieces, but x has {n0} rows "
                    f"(not a multiple of world_size={p}); pass split_sizes= (rows for each rank, summing to "
                    f"{n0}) or a list of {p} arrays")
            sizes = [n0 // p] * p
        else:
            sizes = self._a2a_sizes(split_sizes, "split_sizes", n0)
        cut = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        pieces = [x[cut[j]:cut[j + 1]] for j in range(p)]
        expect = None if recv_split_sizes is None else tuple(self._a2a_sizes(recv_split_sizes, "recv_split_sizes", None))
        got, recv = self._all_to_all(pieces, algorithm, expect, uniform=split_sizes is None)
        y = self.xp.concatenate(got) if p > 1 else got[0]
        return y, recv

    def _all_to_all(self, pieces, algorithm, expect=None, uniform=False):
        """Check, agree on the p x p counts, pick the algorithm, run it."""
        p, r = self.world_size, self.rank
        if not pieces:
            raise CommError(f"{self._describe()}: all_to_all needs {p} pieces (one per rank), got none")
        rows, dt = tuple(pieces[0].shape[1:]), pieces[0].dtype
        for j, a in enumerate(pieces):
            if a.ndim == 0 or tuple(a.shape[1:]) != rows or a.dtype != dt:
                raise CommError(
                    f"{self._describe()}: all_to_all piece {j} has shape {tuple(a.shape)} {a.dtype}, piece 0 "
                    f"{tuple(pieces[0].shape)} {dt}: pieces may differ in length along axis 0 only")
        mine = tuple(int(a.shape[0]) for a in pieces)
        key = (f"{len(pieces)} pieces", "*") + rows
        fn, extras = self._collective("all_to_all", pieces[0], None, algorithm, shape_key=key, extra=(mine, expect))
        if len(pieces) != p:  # the same on every rank (the count is in the agreed signature)
            raise CommError(f"{self._describe()}: all_to_all needs world_size={p} pieces (piece j goes to "
                            f"rank j), every rank passed {len(pieces)}")
        if extras is None:  # validation off: equal pieces need no agreement, uneven ones still do
            if uniform:
                extras = [(mine, None)] * p
            else:
                extras = self._agree_step(("all_to_all", key, dt.str, None, algorithm, None), (mine, expect))
        counts = [list(e[0]) for e in extras]
        bad = [f"rank {i} expects {e[1][j]} row(s) from rank {j}, which sends it {counts[j][i]}"
               for i, e in enumerate(extras) if e[1] is not None for j in range(p) if e[1][j] != counts[j][i]]
        if bad:
            raise CommError(f"{self._describe()}: all_to_all recv_split_sizes disagree with what the ranks send: "
                            + "; ".join(bad[:4]) + ("; ..." if len(bad) > 4 else "")
                            + ". Pass recv_split_sizes[j] = rank j's split_sizes[me], or leave it None")
        if algorithm is None and hasattr(fn, "algorithm"):  # sim: MPICH's choice, by the largest piece
            from ..collectives.alltoall import choose

            name = choose(p, max(max(c) for c in counts) * int(np.prod(rows)) * dt.itemsize)
            fn = _bind(ALGORITHMS["all_to_all"][name], name)
        got = self._run("all_to_all", fn, pieces, counts)
        return got, [counts[j][r] for j in range(p)]

    def _a2a_sizes(self, sizes, what, total):
        """``split_sizes`` of an all-to-all: world_size whole numbers >= 0 (summing to total)."""
        p = self.world_size
        try:
            vals = [int(s) for s in sizes]
            ok = len(vals) == p and all(v == s and v >= 0 for v, s in zip(vals, sizes))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CommError(f"{self._describe()}: all_to_all {what}={sizes!r} must be {p} whole numbers >= 0, "
                            "one per rank (rows of axis 0 for rank j)")
        if total is not None and sum(vals) != total:
            raise CommError(f"{self._describe()}: all_to_all {what}={vals} sums to {sum(vals)}, but x has {total} "
                            "rows along axis 0: the sizes must add up to the rows of x")
        return vals

    alltoall = all_to_all

    # aliases learners arrive with
    allreduce = all_reduce
    bcast = broadcast
    psum = all_reduce


_BOUND = {}  # (fn, name) -> bound: made once, not once per collective


def _bind(fn, name):
    b = _BOUND.get((fn, name))
    if b is not None:
        return b

    def bound(comm, *args):
        return fn(comm, *args)

    bound.algorithm = name
    bound.accepts_out = getattr(fn, "accepts_out", False)
    if len(_BOUND) < 256:
        _BOUND[(fn, name)] = bound
    return bound


def _into(out, y):
    """The result ``y``, copied into ``out`` when one was given (an algorithm that took
    ``out`` already returns it)."""
    if out is None or y is out:
        return y
    if tuple(out.shape) != tuple(y.shape) or out.dtype != y.dtype:
        raise CommError(
            f"out= has shape {tuple(out.shape)} {out.dtype}, the result is {tuple(y.shape)} {y.dtype}: "
            "pass an out= of the result's shape and dtype (mean of integers is float64), or none"
        )
    out[...] = y
    return out

