"""The record of a simulated run: every message and every declared compute span."""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple


class Message(NamedTuple):
    start: float  # virtual time the transfer began (seconds)
    end: float  # virtual time it arrived
    src: int  # global ranks
    dst: int
    nbytes: int
    tag: int
    label: str  # e.g. "all_reduce/ring"
    dropped: bool = False


class Span(NamedTuple):
    rank: int
    start: float
    end: float
    label: str  # "compute", "reduce", ...


class Trace:
    """Messages and compute spans of one ``launch``. ``mlscale.viz`` draws it."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.messages: list[Message] = []
        self.spans: list[Span] = []

    def __len__(self):
        return len(self.messages)

    def bytes_sent(self, rank=None, label=None):
        """Bytes sent by ``rank`` (all ranks if None), optionally only messages whose
        label starts with ``label``."""
        return sum(
            m.nbytes
            for m in self.messages
            if (rank is None or m.src == rank) and (label is None or m.label.startswith(label))
        )

    def bytes_received(self, rank=None, label=None):
        return sum(
            m.nbytes
            for m in self.messages
            if (rank is None or m.dst == rank) and (label is None or m.label.startswith(label))
        )

    def per_rank_bytes(self, label=None):
        """List: bytes sent by each rank."""
        out = [0] * self.world_size
        for m in self.messages:
            if label is None or m.label.startswith(label):
                out[m.src] += m.nbytes
        return out

    def link_bytes(self):
        """{(src, dst): bytes} over every link used."""
        d = defaultdict(int)
        for m in self.messages:
            d[(m.src, m.dst)] += m.nbytes
        return dict(d)

    def labels(self):
        seen = []
        for m in self.messages:
            if m.label not in seen:
                seen.append(m.label)
        return seen

    def filter(self, label=None, src=None, dst=None):
        t = Trace(self.world_size)
        t.messages = [
            m
            for m in self.messages
            if (label is None or m.label.startswith(label))
            and (src is None or m.src == src)
            and (dst is None or m.dst == dst)
        ]
        t.spans = [s for s in self.spans if label is None or s.label.startswith(label)]
        return t

    @property
    def end(self):
        ends = [m.end for m in self.messages] + [s.end for s in self.spans]
        return max(ends, default=0.0)

    def summary(self):
        n = len(self.messages)
        return (
            f"{n} messages, {self.bytes_sent()} bytes, {len(self.spans)} compute spans, "
            f"last event at t={self.end * 1e3:.3f} ms"
        )

    def __repr__(self):
        return f"<Trace {self.summary()}>"
