"""Data parallelism with compressed gradients: every step each rank compresses its
gradients (mlscale.compress), the ranks exchange the payloads, and every rank rebuilds
the same averaged gradient before the optimizer step.

    sync = CompressedDataParallel(TopK(ratio=0.01), error_feedback=True)   # or "topk", ratio=0.01
    hist = train(comm, model, lambda m: SGD(m, lr=0.3), X, y, sync=sync, steps=300)

How the payloads travel depends on the compressor (``compressor.exchange``):

- ``"all_gather"`` (top-k, QSGD, sign): payloads do not add up in compressed form (other
  indices, other scales), so every rank's payload, all tensors packed into one byte
  buffer, is all-gathered round the ring (p - 1 steps); every rank decompresses the p
  payloads in rank order and averages them, so all ranks get bit-identical gradients.
  A rank sends (p - 1) payloads per step: B (p - 1) bytes against the ring all-reduce's
  2 (p - 1) / p n, so the saving shrinks as p grows (Lin et al. 2018 note the same).
- ``"all_reduce"`` (none, random-k with a shared seed, PowerSGD): the payloads are
  linear with one layout on every rank; one ring all-reduce (mean) of all of them.
  PowerSGD all-reduces twice: every P while compressing, then every Q.

With ``Identity`` and error feedback off this is ``DataParallel`` with one bucket,
bit for bit (the test oracle). Compression is declared to the simulator as compute
(``compressor.flops``), so on a fast network it can cost more time than it saves.
"""
from __future__ import annotations

import copy

from ..comm.errors import CommError
from ..compress import Compressor, make
from .common import Stepper


class CompressedDataParallel:
    """Synchronous data parallelism exchanging compressed gradients.

    compressor      a Compressor, or a name ("none", "topk", "randomk", "qsgd", "sign",
                    "powersgd") with its keyword arguments in ``**kwargs``
    error_feedback  wrap it in ErrorFeedback: True, False, or "auto" (the default): for
                    biased compressors only (top-k, random-k, sign, PowerSGD), not for
                    QSGD (unbiased; with few levels error feedback makes it diverge)
    algorithm       the collectives' algorithm (default "ring": bytes = the formulas below)
    """

    def __init__(self, compressor="none", error_feedback="auto", algorithm="ring", **kwargs):
        if not isinstance(compressor, (str, Compressor)):
            raise TypeError(f"CompressedDataParallel: compressor must be a name or a Compressor, "
                            f"got {type(compressor).__name__}")
        self.compressor = make(compressor, error_feedback=error_feedback, **kwargs)
        self.algorithm = algorithm
        self.nbytes_per_step = []         # this rank's payload bytes, every step
        self._bound = False

    @property
    def name(self):
        return f"compressed data parallel ({self.compressor.name})"

    def step(self, comm, model, optimizer, stepper: Stepper, micro_batches):
        k = len(micro_batches)
        loss = 0.0
        for i, (xb, yb) in enumerate(micro_batches):
            loss += stepper.loss_and_grad(xb, yb, zero_grad=(i == 0))
        if k > 1:
            model.grads *= 1.0 / k
        self.exchange(comm, model.named_grads())
        optimizer.step()
        return loss / k

    # -- the exchange -----------------------------------------------------------------
    def exchange(self, comm, grads):
        """Replace every tensor of ``grads`` ({name: view}) by the rebuilt average."""
        comp = self.compressor
        if not self._bound:
            comp.bind(comm.rank)
            self._bound = True
        flops = sum(comp.flops(g.shape) for g in grads.values())
        if flops:
            comm.compute(flops=flops, label="compress")
        payloads = comp.compress_many(grads, all_reduce=lambda x: mean(comm, self.algorithm, x))
        self.nbytes_per_step.append(comp.nbytes(payloads))
        if comp.exchange == "all_reduce":
            self._all_reduce(comm, comp, payloads, grads)
        else:
            self._all_gather(comm, comp, payloads, grads)

    def _all_reduce(self, comm, comp, payloads, grads):
        xp = comm.xp
        parts = [(key, name, a) for key, p in payloads.items()
                 for name, a in p.arrays.items() if name not in p.reduced]
        dtypes = {a.dtype for _, _, a in parts}
        if len(dtypes) > 1:
            raise TypeError(f"{comp.name}: an all-reduce exchange needs payload arrays of one float "
                            f"dtype, got {sorted(map(str, dtypes))}; set exchange = 'all_gather'")
        if parts:
            flat = mean(comm, self.algorithm, xp.concatenate([a.reshape(-1) for _, _, a in parts]))
            o, got = 0, {key: dict(p.arrays) for key, p in payloads.items()}
            for key, name, a in parts:
                got[key][name] = flat[o:o + a.size].reshape(a.shape)
                o += a.size
            payloads = {key: p.replace(got[key]) for key, p in payloads.items()}
        comp.on_aggregate(payloads)
        for key, g in grads.items():
            g[...] = comp.decompress(payloads[key])
        self._charge_decompress(comm, grads, 1)

    def _all_gather(self, comm, comp, payloads, grads):
        xp, p = comm.xp, comm.world_size
        layout = [(key, name, a.dtype, a.shape, int(a.nbytes))
                  for key, pl in payloads.items() for name, a in pl.arrays.items()]
        buf = xp.concatenate([xp.ascontiguousarray(a).reshape(-1).view(xp.uint8)
                              for pl in payloads.values() for a in pl.arrays.values()])
        everyone = comm.all_gather(buf, algorithm=self.algorithm)      # (p * B,) bytes
        B = int(buf.size)
        if everyone.size != p * B:
            raise CommError(f"rank {comm.rank}: compressed payloads differ in size between ranks "
                            f"({everyone.size} bytes gathered, expected {p} x {B}): every rank must "
                            "use the same compressor on the same model")
        decoded = {key: [] for key in payloads}
        for r in range(p):
            o, arrays = r * B, {key: {} for key in payloads}
            for key, name, dtype, shape, nb in layout:
                arrays[key][name] = everyone[o:o + nb].copy().view(dtype).reshape(shape)
                o += nb
            for key, pl in payloads.items():
                decoded[key].append(comp.decompress(pl.replace(arrays[key])))
        for key, g in grads.items():
            g[...] = comp.combine(decoded[key])
        self._charge_decompress(comm, grads, p)

    @staticmethod
    def _charge_decompress(comm, grads, copies):
        n = sum(g.size for g in grads.values())
        comm.compute(flops=2.0 * n * copies, label="decompress")   # write + add, per payload

    # -- accounting -------------------------------------------------------------------
    def wire_nbytes(self, model):
        """Bytes of one rank's payloads per step for ``model`` (a copy of the compressor
        compresses a copy of the gradients; sizes do not depend on the values)."""
        comp = copy.deepcopy(self.compressor)
        grads = {k: g.copy() for k, g in model.named_grads().items()}
        return comp.nbytes(comp.compress_many(grads))

    def expected_trace_bytes(self, model, world_size, steps=1):
        """Bytes every rank together puts on the wire over ``steps`` steps, with ring
        collectives: all-gather (p - 1) p B; all-reduce 2 (p - 1) B (B: one payload)."""
        B, p = self.wire_nbytes(model), world_size
        per_step = (p - 1) * p * B if self.compressor.exchange == "all_gather" else 2 * (p - 1) * B
        return steps * per_step


def mean(comm, algorithm, x):
    """The mean over ranks of x (a new array)."""
    return comm.all_reduce(x, op="mean", algorithm=algorithm)
