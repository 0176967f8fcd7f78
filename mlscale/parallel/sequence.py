"""The communication of sequence parallelism: Megatron-LM SP's operators g and g-bar.

Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", section 4.2.2 and figure 5. Tensor parallelism (``tp_comm.py``) leaves the
LayerNorms (and dropouts) of a block replicated: every rank of the tensor-parallel
group stores the same (batch, seq, d) inputs. Those regions work on each token on its
own, so they can be split along the SEQUENCE instead: rank r keeps tokens
``seq_range(s, t, r)``, s/t of them. Where the sharded region meets a tensor-parallel
one, the all-reduce of plain TP is replaced by its two halves (a ring all-reduce IS a
reduce-scatter followed by an all-gather, so the bytes are the same):

===========================  ===============================  =============================
operator                     forward                          backward
===========================  ===============================  =============================
GatherFromSP (g)             all-gather along the sequence    reduce-scatter along the
                             (before a column-parallel        sequence (sum the partial
                             layer: it needs every token)     input gradients, keep mine)
ReduceScatterToSP (g-bar)    reduce-scatter along the         all-gather along the sequence
                             sequence (after a row-parallel
                             layer: sum the partial outputs,
                             keep my tokens)
ScatterToSP                  keep my tokens (no               all-gather (the embedding
                             communication)                   before the first block)
GatherFromSP (grad="split")  all-gather                       keep my tokens (before a
                                                              replicated LM head)
===========================  ===============================  =============================

Arrays are (batch, seq, d); the sequence is axis 1. The collectives concatenate/split
along axis 0, so each operator moves the sequence to the front first (Megatron keeps its
activations in [s, b, h] layout for this reason). The sequence must divide by the
tensor-parallel size t (``check_sequence_parallel``): a reduce-scatter cuts the flat
array into t equal parts, which are whole tokens only when t divides s.

Every collective is a ring (``algorithm="ring"``): an all-gather of an (b, s/t, d)
shard puts (t-1) (b s d) itemsize bytes on the wire in all, a reduce-scatter of the
(b, s, d) array the same, and the pair the 2 (t-1) (b s d) itemsize of one ring
all-reduce. Each operator counts its calls and bytes per phase, and per collective
(``kinds``), for tests.
"""
from __future__ import annotations

from ..nn._xp import array_module
from .tp_comm import ALGORITHM, _TPOp


def check_sequence_parallel(seq, world_size, where="sequence parallelism"):
    """Raise a ValueError naming the sizes unless ``seq`` divides by ``world_size``."""
    if int(seq) % int(world_size):
        raise ValueError(f"{where}: a sequence of {seq} tokens cannot be split evenly over {world_size} "
                         f"tensor-parallel ranks; use seq_len divisible by tp={world_size} (e.g. "
                         f"{(int(seq) // int(world_size) + 1) * int(world_size)}) or sequence_parallel=False")


def seq_range(seq, world_size, rank):
    """``(start, stop)`` of the tokens rank keeps under sequence parallelism."""
    check_sequence_parallel(seq, world_size)
    n = int(seq) // int(world_size)
    return rank * n, (rank + 1) * n


class _SeqOp(_TPOp):
    """Collectives along axis 1 of (batch, seq, d) arrays, counted per phase and kind."""

    def __init__(self, comm):
        super().__init__(comm)
        self.kinds = {}  # (phase, "all_gather" | "reduce_scatter") -> [calls, nbytes]

    def _tally(self, phase, kind, nbytes):
        self.calls[phase] += 1
        self.nbytes[phase] += int(nbytes)
        c = self.kinds.setdefault((phase, kind), [0, 0])
        c[0] += 1
        c[1] += int(nbytes)

    def all_gather_seq(self, x, phase):  # (b, s/t, d) -> (b, s, d)
        self._tally(phase, "all_gather", x.nbytes)
        if self.comm.world_size == 1:
            return x
        xp = array_module(x)  # numpy, cupy, or mlscale.meta's module for shape-only arrays
        full = self.comm.all_gather(xp.ascontiguousarray(x.swapaxes(0, 1)), algorithm=ALGORITHM)  # (s, b, d)
        return xp.ascontiguousarray(full.swapaxes(0, 1))

    def reduce_scatter_seq(self, x, phase):  # (b, s, d) -> (b, s/t, d), summed over ranks
        self._tally(phase, "reduce_scatter", x.nbytes)
        t = self.comm.world_size
        if t == 1:
            return x
        b, s = x.shape[0], x.shape[1]
        check_sequence_parallel(s, t, f"reduce-scatter on rank {self.comm.rank}")
        xp = array_module(x)  # numpy, cupy, or mlscale.meta's module for shape-only arrays
        mine = self.comm.reduce_scatter(xp.ascontiguousarray(x.swapaxes(0, 1)).reshape(-1), op="sum",
                                        algorithm=ALGORITHM)  # my s/t tokens, flat
        return xp.ascontiguousarray(mine.reshape((s // t, b) + x.shape[2:]).swapaxes(0, 1))

    def split_seq(self, x):  # (b, s, d) -> (b, s/t, d): my tokens, no communication
        lo, hi = seq_range(x.shape[1], self.comm.world_size, self.comm.rank)
        return x[:, lo:hi].copy()  # a copy: a view would keep the whole (b, s, d) array alive


class GatherFromSP(_SeqOp):
    """g of Megatron SP: all-gather the tokens forward; backward reduce-scatters the
    (partial) gradient (``grad="reduce_scatter"``, before a column-parallel layer) or
    keeps my tokens of an already replicated one (``grad="split"``, before the LM head)."""

    name = "g"

    def __init__(self, comm, grad="reduce_scatter"):
        if grad not in ("reduce_scatter", "split"):
            raise ValueError(f"GatherFromSP(grad={grad!r}): use 'reduce_scatter' or 'split'")
        super().__init__(comm)
        self.grad = grad

    def forward(self, x):
        return self.all_gather_seq(x, "forward")

    def backward(self, dout):
        return self.reduce_scatter_seq(dout, "backward") if self.grad == "reduce_scatter" else self.split_seq(dout)


class ReduceScatterToSP(_SeqOp):
    """g-bar of Megatron SP: reduce-scatter the partial sums of a row-parallel layer
    along the sequence forward; all-gather the gradient backward."""

    name = "g_bar"

    def forward(self, x):
        return self.reduce_scatter_seq(x, "forward")

    def backward(self, dout):
        return self.all_gather_seq(dout, "backward")


class ScatterToSP(_SeqOp):
    """Enter the sequence-parallel region from a replicated one (the embedding): keep
    my tokens forward (no communication), all-gather the gradient backward so the
    replicated layer before sees the whole, identical gradient on every rank."""

    name = "scatter"

    def forward(self, x):
        return self.split_seq(x)

    def backward(self, dout):
        return self.all_gather_seq(dout, "backward")


def count_kinds(ops):
    """``{(phase, kind): [calls, nbytes]}`` summed over sequence-parallel operators
    (plain TP operators count as ``(phase, "all_reduce")``)."""
    total = {}
    for op in ops:
        items = op.kinds.items() if hasattr(op, "kinds") else \
            [((ph, "all_reduce"), [op.calls[ph], op.nbytes[ph]]) for ph in ("forward", "backward") if op.calls[ph]]
        for k, (n, b) in items:
            c = total.setdefault(k, [0, 0])
            c[0] += n
            c[1] += b
    return total


__all__ = ["GatherFromSP", "ReduceScatterToSP", "ScatterToSP", "check_sequence_parallel", "seq_range",
           "count_kinds"]
