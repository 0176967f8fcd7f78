"""ZeRO: shard the optimizer state (and gradients, and parameters) over data-parallel ranks.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models" (SC'20), section 5 and figure 1. Mixed-precision Adam keeps, per parameter,
2 bytes of fp16 parameters, 2 of fp16 gradients and K = 12 of optimizer state (fp32
copy of the parameters, momentum, variance): 16 bytes. Plain data parallelism keeps all
of it on every one of the N ranks. ZeRO partitions it:

==========  ===============  ============================
stage       partitioned      bytes per parameter
==========  ===============  ============================
0 (DP)      nothing          2 + 2 + K        = 16
1 (P_os)    optimizer state  2 + 2 + K / N    = 4 + 12/N
2 (P_os+g)  + gradients      2 + (2 + K) / N  = 2 + 14/N
3 (all)     + parameters     (2 + 2 + K) / N  = 16/N
==========  ===============  ============================

The paper's example (figure 1): 7.5 B parameters on N = 64 GPUs need 120 GB each with
plain data parallelism, 31.4 GB with stage 1, 16.6 GB with stage 2, 1.9 GB with stage 3.

:class:`ZeroOptimizer` is a working ZeRO-1 step. Rank r owns chunk r of the flat
parameters (``np.array_split`` cuts: any length, any N) and the optimizer state of that
chunk only (1/N of it). Per step:

1. ``reduce_scatter`` the gradients (mean): rank r receives only ITS chunk of the mean;
2. the optimizer updates that chunk of the parameters (Adam: ``mlscale.nn.Adam`` on a
   view, the fused ``mlscale.ops.adam_step``);
3. ``all_gather`` the chunks: every rank has all the updated parameters again.

A ring reduce-scatter plus a ring all-gather move exactly the bytes of one ring
all-reduce (that is how the ring all-reduce works), so ZeRO-1 costs data parallelism no
extra communication. ``naive=True`` all-reduces the whole gradient first (what one
would write first): the same result, 1.5 times the bytes.

ZeRO-2 and ZeRO-3 (FSDP) of any ``nn`` model, unit by unit, are in ``fsdp.py``; the exact
formulas their tests hold them to (memory per rank and kind, ring bytes per rank) are
``zero_memory_by_kind``, ``ring_bytes_per_rank`` and ``wire_bytes`` here.
"""
from __future__ import annotations

from .tp_comm import shard_range

#: bytes of optimizer state per parameter for mixed-precision Adam (fp32 params, m, v)
ADAM_K = 12
STAGES = (0, 1, 2, 3)


def zero_bytes_per_param(stage, world_size, k=ADAM_K, param_bytes=2, grad_bytes=2):
    """Bytes per parameter on each device under ZeRO ``stage`` (0 = plain data parallel)
    with ``world_size`` = N ranks and K bytes of optimizer state (ZeRO, section 5.1).
    ``param_bytes``/``grad_bytes``: 2 for fp16 (the paper); 8 and 8 with k=16 for a
    float64 model trained by float64 Adam (m and v), as the tests run it."""
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage={stage!r}: use 0 (plain data parallel), 1, 2 or 3")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a whole number >= 1")
    n, P, G = world_size, param_bytes, grad_bytes
    return {0: P + G + k, 1: P + G + k / n, 2: P + (G + k) / n, 3: (P + G + k) / n}[stage]


def zero_memory(num_params, world_size, stage, k=ADAM_K, param_bytes=2, grad_bytes=2):
    """Bytes per device of parameters + gradients + optimizer state (no activations)."""
    if num_params < 0:
        raise ValueError(f"num_params={num_params!r} must be >= 0")
    return num_params * zero_bytes_per_param(stage, world_size, k, param_bytes, grad_bytes)


def zero_memory_by_kind(unit_sizes, world_size, rank, stage, itemsize=8, state_per_param=2,
                        prefetch=True, overlap=True):
    """Exact peak bytes ``{"params", "grads", "optimizer"}`` that ``FSDP`` (fsdp.py) holds
    on ``rank`` for units of ``unit_sizes`` elements: the ZeRO model with rank's real
    chunk sizes (``np.array_split``: the first ``n % p`` ranks get one more), plus the unit
    buffers in flight. Stage 3 params: my shard + the largest unit gathered (the largest
    two neighbours with ``prefetch``); stages 2-3 grads: my shard + the largest unit (two
    neighbours with ``overlap``). ``state_per_param``: Adam keeps m and v (2)."""
    mine = sum(shard_range(n, world_size, rank)[1] - shard_range(n, world_size, rank)[0] for n in unit_sizes)
    total = sum(unit_sizes)

    def in_flight(two):
        pairs = [a + b for a, b in zip(unit_sizes, unit_sizes[1:])] if two and len(unit_sizes) > 1 else []
        return max(pairs + list(unit_sizes) + [0])

    params = total if stage <= 2 else mine + in_flight(prefetch)
    grads = total if stage <= 1 else mine + in_flight(overlap)
    state = total if stage == 0 else mine
    return {"params": params * itemsize, "grads": grads * itemsize, "optimizer": state * state_per_param * itemsize}


def ring_bytes_per_rank(kind, n, world_size, itemsize=8):
    """Bytes each rank sends in one ring ``kind`` ("all_reduce", "reduce_scatter",
    "all_gather") of n elements, chunks cut as ``np.array_split``. Each phase passes p-1
    chunks round the ring, so all ranks together send exactly (p-1) n per phase whatever n;
    but rank r skips one chunk per phase, and with n % p != 0 the chunks differ by one
    element: reduce-scatter (rank r ends with chunk r) skips chunk r, the all-gather
    skips chunk r+1, the all-reduce skips chunks r+1 and r+2 (mod p)."""
    sizes = [shard_range(n, world_size, r)[1] - shard_range(n, world_size, r)[0] for r in range(world_size)]
    p = world_size
    skip = {"reduce_scatter": (0,), "all_gather": (1,), "all_reduce": (1, 2)}
    if kind not in skip:
        raise ValueError(f"ring_bytes_per_rank: kind={kind!r}, use one of {sorted(skip)}")
    if p == 1:
        return [0]
    return [sum(n - sizes[(r + d) % p] for d in skip[kind]) * itemsize for r in range(p)]


def wire_bytes(unit_sizes, world_size, stage, itemsize=8, per_rank=False):
    """Bytes on the wire per training step of ``FSDP`` (ring collectives, one per unit):
    stage 0 an all-reduce, stages 1-2 a reduce-scatter + an all-gather (the same total:
    2(p-1) N), stage 3 two all-gathers + a reduce-scatter (3(p-1) N, 1.5x). ``per_rank``:
    the list of what each rank sends (see ``ring_bytes_per_rank``)."""
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage={stage!r}: use 0, 1, 2 or 3")
    kinds = {0: ("all_reduce",), 1: ("reduce_scatter", "all_gather"), 2: ("reduce_scatter", "all_gather"),
             3: ("reduce_scatter", "all_gather", "all_gather")}[stage]
    out = [0] * world_size
    for n in unit_sizes:
        if n:
            for kind in kinds:
                out = [a + b for a, b in zip(out, ring_bytes_per_rank(kind, n, world_size, itemsize))]
    return out if per_rank else sum(out)


class ZeroOptimizer:
    """ZeRO stage 1: each rank keeps the optimizer state of 1/N of the parameters.

    params              the flat parameters (e.g. ``model.params``), identical on every
                        rank; updated in place by ``step``
    make_optimizer      ``lambda shard: nn.Adam(shard, lr=...)``: builds the optimizer of
                        this rank's chunk (a view into ``params``)
    naive               all-reduce the full gradient instead of reduce-scattering it
    algorithm           collective algorithm ("ring": the bytes of one all-reduce)
    """

    stage = 1

    def __init__(self, comm, params, make_optimizer, naive=False, algorithm="ring"):
        if not hasattr(params, "ndim") or params.ndim != 1:
            raise TypeError(f"ZeroOptimizer needs the flat 1-D params (model.params), got shape "
                            f"{getattr(params, 'shape', None)}")
        if len(params) < comm.world_size:
            raise ValueError(f"ZeroOptimizer: {len(params)} parameters cannot be shared by {comm.world_size} "
                             f"ranks (each needs at least one); use fewer ranks")
        self.comm, self.params, self.naive, self.algorithm = comm, params, bool(naive), algorithm
        self.start, self.stop = shard_range(len(params), comm.world_size, comm.rank)
        self.shard = params[self.start:self.stop]  # a view: the optimizer updates params in place
        self.optimizer = make_optimizer(self.shard)
        if getattr(self.optimizer, "params", None) is not self.shard:
            raise TypeError("make_optimizer must build the optimizer on the shard it is given, "
                            "e.g. lambda shard: nn.Adam(shard, lr=1e-3)")

    def step(self, grads):
        """One update from this rank's ``grads`` (flat, same layout as params); afterwards
        every rank holds the parameters a data-parallel Adam step would give."""
        comm = self.comm
        if grads.shape != self.params.shape:
            raise ValueError(f"ZeroOptimizer.step: grads of shape {tuple(grads.shape)}, params are "
                             f"{tuple(self.params.shape)}: pass the flat gradient of the whole model")
        if self.naive:  # every rank gets all of the mean gradient, and uses 1/N of it
            g = comm.all_reduce(grads, op="mean", algorithm=self.algorithm)[self.start:self.stop]
        else:  # rank r gets only chunk r of the mean gradient
            g = comm.reduce_scatter(grads, op="mean", algorithm=self.algorithm)
        self.optimizer.step(g)  # updates self.shard, a view into params
        full = comm.all_gather(self.shard, algorithm=self.algorithm)
        self.params[...] = full

    def state_nbytes(self):
        """Bytes of optimizer state held by this rank (about 1/N of the full state)."""
        return sum(int(v.nbytes) for v in self.optimizer.state_dict().values() if hasattr(v, "nbytes"))

    def state_numel(self):
        return sum(int(v.size) for v in self.optimizer.state_dict().values() if hasattr(v, "size"))


__all__ = ["ADAM_K", "STAGES", "zero_bytes_per_param", "zero_memory", "zero_memory_by_kind", "ring_bytes_per_rank",
           "wire_bytes", "ZeroOptimizer"]
