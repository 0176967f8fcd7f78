"""``Meta``: a NumPy-like module of shape-only arrays for one rank, with its cost
counter, its memory and (optionally) a roofline model of a named accelerator.

    from mlscale.meta import Meta
    xp = Meta("H100-SXM", comm=comm)           # comm on sim: every op advances comm.clock
    model = GPT(cfg, dtype=np.float16, xp=xp)  # params and grads: no data, 2 bytes each counted
    Adam(model).step()                         # optimizer state counted as "optimizer"
    xp.costs.flops["matmul"], xp.costs.seconds, xp.memory.peak

``Meta`` stands where ``numpy`` stands (``xp.zeros``, ``xp.tanh``, ``xp.add.at``,
``xp.random.default_rng``...). Each op adds its FLOPs and bytes to ``costs`` by op class
(matmul, attention, elementwise, reduction); with a ``hardware`` preset it also costs
time by the roofline (``Hardware.op_time``: ``max(flops / (peak[dtype] eff),
bytes / (hbm_bw eff_mem))``, Williams, Waterman and Patterson 2009), charged to the
rank's virtual clock with ``comm.compute(seconds=...)`` when a ``comm`` is given.

What is counted is what the program does: each NumPy op is one kernel that reads its
inputs from HBM and writes its output back, except inside a :meth:`Meta.fusion` region
(mlscale.nn marks GELU, the norms, the attention softmax and its backward, and the
cross-entropy with ``@fused``), charged as one kernel: the region's inputs and outputs
only, as Megatron's fused kernels move them. ``Meta(fuse=False)`` charges every op (an
unfused PyTorch eager run). A GPT-2 XL-sized step (b=8, s=1024, fp16, A100 preset):
fused 0.55 s (MFU 0.49), of which 0.33 s weight matmuls, 0.08 s attention, 0.13 s
elementwise; unfused 1.82 s (MFU 0.15), 1.29 s of it elementwise. The attention core is
not FlashAttention: P (b a s^2) is written and read back, as this package's code does;
Q K^T of 16-bit q, k is one 16-bit tensor-core GEMM writing 16-bit scores, as
Megatron's baddbmm (before: charged at the fp32 rate, 0.18 s of attention).

Memory: every owning array counts its bytes as live from creation until CPython frees it,
by kind: "params" and "grads" (a model's flat buffers), "optimizer" (its state), and
"activations" (everything else); ``memory.peak`` is the high-water mark of the total,
``memory.peak_by_kind`` each kind's. Past the preset's memory it raises
:class:`OutOfMemoryError`, worded like PyTorch's CUDA allocator.
"""
import contextlib
import weakref

import numpy as np

from .accounting import KINDS, OP_CLASSES, Costs, GiB, Memory, OutOfMemoryError, _Fusion
from .array import MetaArray
from .functions import _WHERE, MetaRNG, NumpyFunctions, _Random
from .shapes import NO_DEVICE, ShapeOnlyError, index_shape, norm_axes, reduce_dtype, ufunc_dtypes


class _Ufunc:
    """``xp.exp``, ``xp.add`` ... of a Meta device: call, ``.at`` and ``.reduce``."""

    __slots__ = ("ufunc", "dev", "__name__")

    def __init__(self, ufunc, dev):
        self.ufunc, self.dev, self.__name__ = ufunc, dev, ufunc.__name__

    def __call__(self, *args, out=None, **kw):
        if self.ufunc is np.matmul:
            return self.dev.matmul(*args, out=out)
        return self.dev.elementwise(self.ufunc, args, out=out, **kw)

    def at(self, a, indices, b=None):
        return self.dev.scatter(self.ufunc, a, indices, b)

    def reduce(self, a, axis=0, dtype=None, out=None, keepdims=False):
        return self.dev.reduction(self.ufunc.__name__, a, axis, dtype, out, keepdims)


_BROADCAST = {}  # (shapes) -> broadcast shape: the same few shapes recur in every layer
_RED_NAMES = {"add": "sum", "multiply": "prod", "maximum": "max", "minimum": "min", "logical_or": "any",
              "logical_and": "all"}


class Meta(NumpyFunctions):
    """One rank's shape-only array module (use it as ``xp``).

    hardware: a :class:`mlscale.meta.Hardware` or a preset name ("A100-80GB-SXM",
    "H100-SXM", "T4"), or None (count FLOPs and bytes only: no time, no memory limit).
    comm: a Communicator; on ``sim`` each op's roofline time goes to ``comm.compute``.
    allow_tf32: float32 matmuls at the TF32 tensor-core rate (PyTorch's
    ``torch.backends.cuda.matmul.allow_tf32``), where the preset has one.
    fuse: charge ``fusion()`` regions as one kernel each (default), or every op (False).
    record: keep ``oplog``, one ``(op, class, flops, bytes, seconds)`` per charge."""

    shape_only = True
    __name__ = "mlscale.meta"

    def __init__(self, hardware=None, comm=None, allow_tf32=False, record=False, fuse=True):
        from .hardware import Hardware, get_hardware

        self.hardware = get_hardware(hardware) if hardware is not None and not isinstance(hardware, Hardware) \
            else hardware
        self.comm, self.allow_tf32 = comm, bool(allow_tf32)
        self.costs = Costs()
        gpu = getattr(comm, "rank", 0) if comm is not None else 0
        self.memory = Memory(self.hardware.memory_bytes if self.hardware else None,
                             self.hardware.name if self.hardware else "meta", gpu)
        self.record = record
        self.oplog = [] if record else None  # (op, class, flops, bytes, seconds) when record=True
        self._class = None  # an op-class override (``with xp.op_class("attention")``)
        self._kind = "activations"
        self.fuse = bool(fuse)
        self._fusion = None  # the open fusion() region, if any
        self._compute = None
        if comm is not None and getattr(comm, "backend", None) == "sim":
            sim, R = comm.sim, comm._R
            self._compute = lambda seconds, label: _sim_compute(sim, R, seconds, label)
            if not hasattr(sim, "meta_devices"):  # messages of meta arrays arrive on this rank's device
                sim.meta_devices = {}
            sim.meta_devices[R.rank] = self
        elif comm is not None:
            self._compute = comm.compute  # real engines: compute() does nothing (the work takes the time)
        self.random = _Random(self)
        self._ufuncs = {}

    def __repr__(self):
        return f"Meta({self.hardware.name if self.hardware else None!r})"

    # -- module attributes ---------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(np, name, None)
        if isinstance(attr, np.ufunc):
            u = self._ufuncs.get(name)
            if u is None:
                u = self._ufuncs[name] = _Ufunc(attr, self)
            return u
        if attr is not None and (isinstance(attr, (float, int, type, np.dtype)) or name in ("dtype", "newaxis")):
            return attr  # np.float32, np.inf, np.pi, np.newaxis, np.dtype
        raise AttributeError(f"mlscale.meta has no {name!r}: add it to mlscale/meta/device.py, "
                             f"or run this part with xp='numpy'")

    def summary(self):
        """A small table: FLOPs, bytes and roofline seconds per op class; memory by kind (GiB)."""
        c, m = self.costs, self.memory
        rows = [f"{self!r}: {c.ops} ops, {c.total_flops:.4g} FLOPs, {c.total_bytes:.4g} bytes, {c.seconds:.4g} s"]
        for k in OP_CLASSES:
            rows.append(f"  {k:<12} {c.flops[k]:>12.4g} FLOPs {c.bytes[k]:>12.4g} B {c.time[k]:>10.4g} s")
        rows.append(f"  memory: peak {m.peak / GiB:.3f} GiB" +
                    (f" of {m.capacity / GiB:.2f} GiB" if m.capacity else "") + "; at the peak " +
                    ", ".join(f"{k} {v / GiB:.3f}" for k, v in m.at_peak.items()) + " GiB")
        return "\n".join(rows)

    # -- fusion --------------------------------------------------------------------------
    @contextlib.contextmanager
    def fusion(self, name="fused"):
        """Charge the elementwise ops and reductions inside as ONE kernel, as a fused GPU
        kernel runs them (Megatron's fused bias-GELU, LayerNorm and softmax kernels): their
        FLOPs add up, but the bytes are only what enters from before the region (each
        array once) and what leaves it (arrays made inside and still alive at its end, and
        arrays from before written in place). Matmuls inside stay their own kernels; their
        outputs count as read. Use it around a whole function call (``@fused`` in
        mlscale.nn) so the function's temporaries are gone when the region ends. A no-op
        with ``Meta(fuse=False)`` (one kernel per NumPy op, as PyTorch eager) or nested."""
        if not self.fuse or self._fusion is not None:
            yield
            return
        f = self._fusion = _Fusion(self.memory.nallocs)
        try:
            yield
        finally:
            self._fusion = None
        nbytes = sum(f.reads.values()) + sum(f.writes.values())
        for ref in f.created:
            a = ref()
            if a is not None and id(a) not in f.writes:
                nbytes += a.nbytes
        if f.flops or nbytes:
            self.charge("elementwise", f.flops, nbytes, f.dtype or np.float32, name)

    def _touch(self, reads, writes=()):
        """Inside a fusion: note arrays read and written (roots, largest view of each)."""
        f = self._fusion
        for a in reads:
            if isinstance(a, MetaArray):
                root = a.base if a.base is not None else a
                if root.born < f.start or id(root) in f.external:
                    k = id(root)
                    n = a.size * a.dtype.itemsize
                    if n > f.reads.get(k, 0):
                        f.reads[k] = n
        for a in writes:
            if isinstance(a, MetaArray):
                root = a.base if a.base is not None else a
                if root.born < f.start:
                    k = id(root)
                    n = a.size * a.dtype.itemsize
                    if n > f.writes.get(k, 0):
                        f.writes[k] = n
                if f.dtype is None:
                    f.dtype = a.dtype

    # -- tags ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def op_class(self, cls):
        """Charge the ops inside at the efficiency of ``cls`` (e.g. "attention")."""
        if cls not in OP_CLASSES:
            raise ValueError(f"op_class({cls!r}): use one of {OP_CLASSES}")
        old, self._class = self._class, cls
        try:
            yield
        finally:
            self._class = old

    @contextlib.contextmanager
    def kind(self, kind):
        """Tag the arrays allocated inside as ``kind`` (params, grads, optimizer, activations)."""
        if kind not in KINDS:
            raise ValueError(f"kind({kind!r}): use one of {KINDS}")
        old, self._kind = self._kind, kind
        try:
            yield
        finally:
            self._kind = old

    # -- memory --------------------------------------------------------------------------
    def _alloc(self, a):
        m = self.memory
        n = a.size * a.dtype.itemsize
        kind = a.kind or self._kind
        a.kind = kind
        if m.capacity is not None and m.allocated + n > m.capacity:
            a.dev = NO_DEVICE  # never counted, so never freed
            by = ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in m.live.items())
            raise OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {n / GiB:.2f} GiB (GPU {m.gpu}; {m.capacity / GiB:.2f} GiB "
                f"total capacity; {m.allocated / GiB:.2f} GiB already allocated; "
                f"{max(m.capacity - m.allocated, 0) / GiB:.2f} GiB free) [{m.name}, shape-only: {by}; "
                f"this {kind} array {a.shape} {a.dtype}]. Shard the model (tp/pp/ZeRO), recompute "
                f"activations, or use smaller micro-batches")
        a.born = m.nallocs
        m.nallocs += 1
        if self._fusion is not None:
            self._fusion.created.append(weakref.ref(a))
        m.allocated += n
        live = m.live[kind] = m.live[kind] + n
        if live > m.peak_by_kind[kind]:
            m.peak_by_kind[kind] = live
        if m.allocated > m.peak:
            m.peak = m.allocated
            m.at_peak = dict(m.live)

    def _free(self, a):
        n = a.size * a.dtype.itemsize
        m = self.memory
        m.allocated -= n
        m.live[a.kind] -= n

    # -- costs ---------------------------------------------------------------------------
    def charge(self, cls, flops, nbytes, dtype, op=""):
        """Add one op's FLOPs and bytes (class ``cls``, or the ``op_class`` in force) and its time."""
        if self._class is not None and (cls == "matmul" or self._class != "attention"):
            cls = self._class  # inside op_class("attention") only the matmuls change class
        f = self._fusion
        if f is not None and cls in ("elementwise", "reduction"):
            f.flops += flops  # the bytes are the region's, charged when it ends
            return
        c = self.costs
        c.flops[cls] += flops
        c.bytes[cls] += nbytes
        c.ops += 1
        t = 0.0
        if self.hardware is not None:
            t = self.hardware.op_time(cls, flops, nbytes, dtype, self.allow_tf32)
            c.time[cls] += t
            if self._compute is not None and t > 0:
                self._compute(seconds=t, label=cls)  # (cls: the trace's span label)
        if self.oplog is not None:
            self.oplog.append((op, cls, flops, nbytes, t))

    def fused(self, op, reads, writes, flops_per_element, dtype=None):
        """Charge one fused elementwise kernel (e.g. Adam: reads p, g, m, v; writes p, m, v)."""
        n = max(a.size for a in reads + writes)
        nbytes = sum(a.nbytes for a in reads) + sum(a.nbytes for a in writes)
        self.charge("elementwise", flops_per_element * n, nbytes, dtype or reads[0].dtype, op)

    # -- the ops -------------------------------------------------------------------------
    def elementwise(self, ufunc, inputs, out=None, dtype=None, **kw):
        """A ufunc on arrays and scalars: NumPy's broadcast shape and result dtype."""
        if isinstance(out, tuple):
            out = out[0] if len(out) == 1 else out
        shapes = tuple(x.shape if isinstance(x, (MetaArray, np.ndarray)) else () for x in inputs)
        s0 = shapes[0]
        if all(s == s0 for s in shapes):
            shape = s0
        else:
            shape = _BROADCAST.get(shapes)
            if shape is None:
                shape = np.broadcast_shapes(*shapes)
                if len(_BROADCAST) < 65536:
                    _BROADCAST[shapes] = shape
        if ufunc is _WHERE:
            dts = (np.result_type(*[x.dtype if isinstance(x, (MetaArray, np.ndarray, np.generic)) else x
                                    for x in inputs[1:]]),)
        else:
            dts = ufunc_dtypes(ufunc, inputs, None if dtype is None else np.dtype(dtype))
        read = 0
        for x in inputs:
            if isinstance(x, (MetaArray, np.ndarray)):
                read += x.size * x.dtype.itemsize
        n = 1
        for s in shape:
            n *= s
        if out is None:
            res = self.new(shape, dts[0])
        else:
            if not isinstance(out, MetaArray):
                raise ShapeOnlyError(f"np.{ufunc.__name__}: out= must be a shape-only array, got {type(out).__name__}")
            if out.shape != shape:
                try:
                    if np.broadcast_shapes(out.shape, shape) != out.shape:
                        raise ValueError
                except ValueError:
                    raise ValueError(f"non-broadcastable output operand with shape {out.shape} doesn't match the "
                                     f"broadcast shape {shape}") from None
                n = out.size
            if not np.can_cast(dts[0], out.dtype, casting="same_kind"):
                raise TypeError(f"Cannot cast ufunc '{ufunc.__name__}' output from dtype('{dts[0]}') to "
                                f"dtype('{out.dtype}') with casting rule 'same_kind' (as NumPy: cast first)")
            res = out
        if self._fusion is not None:
            self._touch(inputs, (res,))
        self.charge("elementwise", n, read + n * res.dtype.itemsize, res.dtype, ufunc.__name__)
        return res

    def matmul(self, a, b, out=None, **kw):
        """``a @ b`` with NumPy's rules (1-D operands, batch broadcasting); ``2 n k m`` FLOPs per batch entry."""
        sa, sb = _shape(a), _shape(b)
        if not sa or not sb:
            raise ValueError("matmul: Input operand does not have enough dimensions (a 0-d array or scalar)")
        a2 = (1,) + sa if len(sa) == 1 else sa
        b2 = sb + (1,) if len(sb) == 1 else sb
        n, k = a2[-2], a2[-1]
        k2, m = b2[-2], b2[-1]
        if k != k2:
            raise ValueError(f"matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc "
                             f"signature (n?,k),(k,m?)->(n?,m?) (size {k2} is different from {k}): shapes {sa} @ {sb}")
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
        shape = batch + ((n,) if len(sa) > 1 else ()) + ((m,) if len(sb) > 1 else ())
        (dt,) = ufunc_dtypes(np.matmul, (a, b))
        nb = 1
        for s in batch:
            nb *= s
        res = self.new(shape, dt) if out is None else out
        if out is not None and out.shape != shape:
            raise ValueError(f"matmul: out= has shape {out.shape}, the product is {shape}")
        nbytes = _nbytes(a) + _nbytes(b) + nb * n * m * res.dtype.itemsize
        if self._fusion is not None:  # a GEMM of its own: its inputs read, its output written to HBM
            self._fusion.external.add(id(res.base if res.base is not None else res))
        self.charge("matmul", 2 * nb * n * k * m, nbytes, dt, "matmul")
        return res

    def reduction(self, name, a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=True):
        """sum/mean/max/... over ``axis``: NumPy's shape (keepdims) and dtype; one FLOP per input element."""
        name = _RED_NAMES.get(name, name)
        if not isinstance(a, MetaArray):
            a = self.asarray(a)
        if name in ("argmax", "argmin") and isinstance(axis, tuple):
            raise TypeError(f"{name}: axis must be an integer")
        axes = norm_axes(axis, a.ndim, name)
        if keepdims:
            shape = tuple(1 if i in axes else s for i, s in enumerate(a.shape))
        else:
            shape = tuple(s for i, s in enumerate(a.shape) if i not in axes)
        dt = reduce_dtype(name, a.dtype, None if dtype is None else np.dtype(dtype))
        if out is not None:
            if out.shape != shape:
                raise ValueError(f"{name}: out= has shape {out.shape}, the reduction gives {shape}")
            res = out
        else:
            res = self.new(shape, dt)
        if self._fusion is not None:
            self._touch((a,), (res,))
        self.charge("reduction", a.size, a.nbytes + res.nbytes, a.dtype, name)
        return res

    def scatter(self, ufunc, a, indices, b=None):
        """``np.add.at(a, indices, b)``: reads b and the indices, read-modify-writes the rows of a it names."""
        target_shape = index_shape(a.shape, indices)[0]  # the rows it names
        n = 1
        for s in target_shape:
            n *= s
        nbytes = _nbytes(b) + 2 * n * a.dtype.itemsize + _nbytes(indices if not isinstance(indices, tuple)
                                                                 else indices[0])
        self.charge("elementwise", n, nbytes, a.dtype, f"{ufunc.__name__}.at")


def _sim_compute(sim, R, seconds, label):
    """Advance the clock of whichever entity of rank R runs now: the rank, or one of its
    communication-stream tasks (``comm.start``), whose reductions are then its own time."""
    E = sim.current
    sim.compute(E if E is not None and E.rank == R.rank else R, seconds, label)


def _shape(x):
    if isinstance(x, (MetaArray, np.ndarray)):
        return tuple(x.shape)
    return np.shape(x)


def _nbytes(x):
    if isinstance(x, (MetaArray, np.ndarray)):
        return x.size * x.dtype.itemsize
    return 0


def is_shape_only(x):
    """True for a MetaArray or a Meta module (cheap: no import of this package needed by callers)."""
    return getattr(x, "_shape_only", False) or getattr(x, "shape_only", False) is True


__all__ = ["Meta", "MetaRNG", "Costs", "Memory", "OutOfMemoryError", "KINDS", "OP_CLASSES", "is_shape_only"]
