"""What every gradient compressor shares: the payload, the interface, the byte count.

A compressor turns one gradient tensor into a :class:`Payload`, the arrays that go on the
wire, and back::

    comp = TopK(ratio=0.01)
    payload = comp.compress(grad, key="0.weight")   # arrays: int32 indices, fp32 values
    dense = comp.decompress(payload)                # grad's shape, zeros where not sent
    comp.nbytes(payload)                            # exact bytes on the wire: 8k
    comp.ratio(payload)                             # dense bytes / wire bytes

``key`` names the tensor: a compressor keeps per-tensor state under it (a step counter
for seeds, PowerSGD's warm-start Q; :class:`ErrorFeedback` its residual). Scalars that
travel (QSGD's norm, 1-bit SGD's scale) are 1-element arrays, so ``nbytes`` counts them;
what every rank knows without sending (a shared seed, k, the number of levels) is in
``payload.meta`` and costs nothing.

How payloads are exchanged (``exchange``, used by mlscale.train.CompressedDataParallel):

- ``"all_gather"``: top-k, QSGD, sign. Two ranks' payloads cannot be added as they
  are: top-k picks different indices on each rank (the sum of two sparse vectors has up
  to 2k entries, so a ring all-reduce's partial sums grow at every hop), and quantized
  values with different norms/scales do not add in the compressed domain. So every rank
  gathers all p payloads, decompresses each and averages: a rank receives (p - 1)
  payloads, which grows with p (an all-reduce moves under 2n whatever p is).
- ``"all_reduce"``: the payload is *linear* and has the same layout on every rank, so
  the average of payloads is the payload of the average: the identity, random-k with a
  shared seed (every rank picks the same indices), PowerSGD (P and Q are all-reduced).

Compression costs compute too; ``flops_per_element`` models it for the simulator's
clock (mlscale.comm.NetworkModel(flops=)): an assumption, stated, not a measurement.
"""
from __future__ import annotations

import zlib
from math import prod

import numpy as np

from ..nn._xp import array_module


def _ops():
    """mlscale.ops, imported on first use (it loads numba; importing mlscale.compress should not)."""
    from .. import ops

    return ops


class Payload:
    """One tensor's compressed form.

    arrays   {name: array} in a fixed order: everything that crosses the network
    shape    the dense tensor's shape; dtype its dtype
    meta     what every rank knows without sending (shared-seed indices, k, levels)
    reduced  names in ``arrays`` already all-reduced while compressing (PowerSGD's P)
    """

    __slots__ = ("arrays", "shape", "dtype", "meta", "reduced")

    def __init__(self, arrays, shape, dtype, meta=None, reduced=()):
        self.arrays = dict(arrays)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.meta = dict(meta or {})
        self.reduced = tuple(reduced)

    @property
    def nbytes(self):
        """Bytes on the wire: the sum of the arrays' sizes (bits already packed)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    @property
    def dense_nbytes(self):
        return prod(self.shape) * self.dtype.itemsize

    def replace(self, arrays):
        """A payload of the same layout holding ``arrays`` (e.g. another rank's)."""
        return Payload(arrays, self.shape, self.dtype, self.meta, self.reduced)

    def __repr__(self):
        parts = ", ".join(f"{k}: {a.dtype}{tuple(a.shape)}" for k, a in self.arrays.items())
        return f"<Payload {self.shape} -> {{{parts}}}, {self.nbytes} B of {self.dense_nbytes}>"


def seed_for(seed, *parts):
    """A 63-bit seed from ``seed`` and ``parts`` (ints or strings, e.g. key, step, rank).
    Strings go through crc32, not ``hash()`` (which Python salts per process)."""
    words = [int(seed)] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def check_ratio(name, ratio=None, k=None):
    """Validate a sparsifier's ratio (0 < ratio <= 1) or k (an int >= 1): exactly one."""
    if (ratio is None) == (k is None):
        raise ValueError(f"{name}: pass exactly one of ratio= (fraction kept, e.g. 0.01) or k= "
                         f"(elements kept per tensor), got ratio={ratio!r}, k={k!r}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name}: k={k!r} must be an int >= 1 (elements kept per tensor)")
        return None, int(k)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"{name}: ratio={ratio!r} must be a fraction in (0, 1], e.g. 0.01 "
                         "keeps 1% of the elements")
    return float(ratio), None


def k_for(ratio, k, n):
    """Elements kept of a tensor of n: ceil(ratio * n) (at least 1), or min(k, n)."""
    if k is not None:
        return min(k, n)
    return max(1, min(n, int(np.ceil(ratio * n - 1e-9))))


class Compressor:
    """The interface. Subclasses implement ``_compress(x, key)`` and ``decompress``."""

    name = "compressor"
    exchange = "all_gather"        # or "all_reduce" (see the module docstring)
    unbiased = False               # E[decompress(compress(x))] = x: no error feedback needed
    flops_per_element = 0.0        # modelled compress cost per element (simulated clock)

    def __init__(self, seed=0):
        self.seed = int(seed)
        self.comm_rank = 0         # set by bind(): seeds that must differ between ranks
        self._steps = {}           # key -> how many times that tensor was compressed

    # -- the interface ---------------------------------------------------------------
    def compress(self, x, key=""):
        """Compress one tensor; returns its :class:`Payload`."""
        return self.compress_many({key: x})[key]

    def compress_many(self, tensors, all_reduce=None):
        """Compress ``{key: tensor}``; returns ``{key: Payload}`` in the same order.
        ``all_reduce(flat) -> mean over ranks`` is for compressors that talk while they
        compress (PowerSGD); None means a world of one."""
        return {key: self._compress(x, key) for key, x in tensors.items()}

    def _compress(self, x, key):  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def decompress(self, payload):  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def nbytes(self, payload):
        """Exact bytes on the wire for this payload (indices + values + scales + bits)."""
        if isinstance(payload, dict):
            return sum(p.nbytes for p in payload.values())
        return payload.nbytes

    def ratio(self, payload):
        """Compression ratio: dense bytes / wire bytes (inf when nothing is sent)."""
        ps = payload.values() if isinstance(payload, dict) else [payload]
        dense, wire = sum(p.dense_nbytes for p in ps), self.nbytes(payload)
        return dense / wire if wire else float("inf")

    def combine(self, decoded):
        """Aggregate the p decompressed tensors (rank order) of an all-gather: the mean."""
        acc = decoded[0].copy()
        for d in decoded[1:]:
            acc += d
        if len(decoded) > 1:
            acc *= acc.dtype.type(1.0 / len(decoded))
        return acc

    def on_aggregate(self, payloads):
        """Called with the averaged payloads after an all-reduce exchange (PowerSGD keeps
        its Q as the next step's warm start). Default: nothing."""

    def bind(self, rank):
        """This copy works for ``rank`` (its random seeds differ from other ranks')."""
        self.comm_rank = int(rank)
        return self

    def flops(self, shape):
        """Modelled FLOPs to compress (and decompress) a tensor of ``shape``."""
        return self.flops_per_element * prod(shape)

    # -- helpers for subclasses ---------------------------------------------------------
    def _next_step(self, key):
        t = self._steps.get(key, 0)
        self._steps[key] = t + 1
        return t

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


class Identity(Compressor):
    """No compression: the tensor itself, all-reduced (the data-parallel oracle)."""

    name = "none"
    exchange = "all_reduce"
    unbiased = True

    def _compress(self, x, key):
        return Payload({"values": x.reshape(-1)}, x.shape, x.dtype)

    def decompress(self, payload):
        return payload.arrays["values"].reshape(payload.shape)


def zeros_like(x):
    return array_module(x).zeros_like(x)
