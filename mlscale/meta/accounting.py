"""What a Meta device counts: FLOPs, bytes and seconds per op class (``Costs``), live
and peak bytes by kind (``Memory``), the out-of-memory error, and an open fusion region.
"""
KINDS = ("params", "grads", "optimizer", "activations")
OP_CLASSES = ("matmul", "attention", "elementwise", "reduction")
GiB = 2 ** 30


class OutOfMemoryError(MemoryError):
    """A shape-only allocation went past the accelerator's memory (torch.cuda.OutOfMemoryError)."""


class Costs:
    """FLOPs, bytes and modelled seconds per op class; ``ops`` counts the ops."""

    def __init__(self):
        self.flops = dict.fromkeys(OP_CLASSES, 0)
        self.bytes = dict.fromkeys(OP_CLASSES, 0)
        self.time = dict.fromkeys(OP_CLASSES, 0.0)
        self.ops = 0

    @property
    def total_flops(self):
        return sum(self.flops.values())

    @property
    def total_bytes(self):
        return sum(self.bytes.values())

    @property
    def seconds(self):
        return sum(self.time.values())

    def __repr__(self):
        return f"Costs(flops={self.flops}, bytes={self.bytes}, seconds={self.seconds:.6g}, ops={self.ops})"


class Memory:
    """Live and peak bytes of one rank's device, by kind."""

    def __init__(self, capacity=None, name="device", gpu=0):
        self.capacity, self.name, self.gpu = capacity, name, gpu
        self.live = dict.fromkeys(KINDS, 0)
        self.peak_by_kind = dict.fromkeys(KINDS, 0)
        self.allocated = 0
        self.nallocs = 0  # allocations so far (each array's ``born`` stamp)
        self.peak = 0
        self.at_peak = dict(self.live)  # live bytes by kind when the total peaked

    def reset_peak(self):
        self.peak, self.peak_by_kind, self.at_peak = self.allocated, dict(self.live), dict(self.live)

    def __repr__(self):
        return f"Memory(allocated={self.allocated}, peak={self.peak}, live={self.live})"


class _Fusion:
    """The bookkeeping of an open ``Meta.fusion()`` region."""

    __slots__ = ("start", "flops", "reads", "writes", "created", "external", "dtype")

    def __init__(self, start):
        self.start, self.flops, self.dtype = start, 0, None
        self.reads, self.writes, self.created, self.external = {}, {}, [], set()


__all__ = ["KINDS", "OP_CLASSES", "GiB", "OutOfMemoryError", "Costs", "Memory"]
