"""The network and machine model of the ``sim`` engine.

A message of ``nbytes`` from ``src`` to ``dst`` takes ``alpha + nbytes * beta``
seconds (Hockney's alpha-beta model), on that link's own alpha/beta if given. Each
rank has one outgoing and one incoming port: messages leaving one rank, or arriving
at one rank, go one after the other (so a parameter server's link is a bottleneck,
and a ring is not). Reducing ``nbytes`` costs ``nbytes * gamma`` seconds of compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass
class NetworkModel:
    """Costs and faults for the simulated engine.

    alpha    latency per message, seconds (default 10 us)
    beta     seconds per byte (default 1e-9: 1 GB/s)
    gamma    seconds per byte reduced (default 0: reductions are free)
    links    per-link overrides ``{(src, dst): (alpha, beta)}``, or a function
             ``(src, dst) -> (alpha, beta)`` (e.g. fast inside a node, slow across)
    speeds   relative compute speed per rank ``{rank: factor}`` or a list; 0.25 makes
             a rank a straggler four times slower
    flops    modelled FLOP/s of a speed-1 rank, for ``comm.compute(flops=...)``
    failures ``{rank: time}``: the rank dies at that virtual time
    drops    ``{(src, dst): time}``: the link loses every message sent from that time on
    eager_limit  messages up to this many bytes are sent eagerly (the send returns once
             the data is on the wire, received or not); larger ones use rendezvous: the
             send waits until the receiver has posted the matching recv, as MPI does
             for large messages. So ``send`` then ``recv`` on both sides of a pair
             deadlocks above the limit, as it would under mpiexec. None: all eager.
    """

    alpha: float = 1e-5
    beta: float = 1e-9
    gamma: float = 0.0
    links: Mapping | Callable | None = None
    speeds: Mapping | list | None = None
    flops: float = 1e10
    failures: Mapping = field(default_factory=dict)
    drops: Mapping = field(default_factory=dict)
    eager_limit: int | None = 65536

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"NetworkModel.{name}={v!r} must be a number >= 0 (seconds)")
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) != getattr(self, name):  # nan passes ">= 0" checks in no language
                raise ValueError(f"NetworkModel.{name}=nan must be a number >= 0 (seconds)")
        if isinstance(self.flops, bool) or not isinstance(self.flops, (int, float)) or not self.flops > 0:
            raise ValueError(f"NetworkModel.flops={self.flops!r} must be a number > 0 (FLOP/s)")
        e = self.eager_limit
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 0):
            raise ValueError(
                f"NetworkModel.eager_limit={e!r} must be a whole number of bytes >= 0 "
                "(0: every message uses rendezvous), or None (every message is eager)")

    @classmethod
    def cluster(cls, ranks_per_node, intra=(1e-6, 1 / 200e9), inter=(5e-6, 1 / 25e9), **kwargs):
        """A cluster of nodes with ``ranks_per_node`` GPUs each, ranks numbered node by
        node (rank // ranks_per_node is the node). ``intra``: (alpha, beta) inside a node
        (default NVLink-like: 1 us, 200 GB/s); ``inter``: between nodes (default
        InfiniBand-like: 5 us, 25 GB/s, one network card per GPU). Other keyword
        arguments go to NetworkModel (gamma, speeds, failures, ...)."""
        if int(ranks_per_node) != ranks_per_node or ranks_per_node < 1:
            raise ValueError(f"NetworkModel.cluster: ranks_per_node must be a whole number >= 1, got {ranks_per_node!r}")
        for name, pair in (("intra", intra), ("inter", inter)):
            if len(pair) != 2 or min(pair) < 0:
                raise ValueError(f"NetworkModel.cluster: {name} must be (alpha seconds, beta seconds/byte) >= 0, got {pair!r}")
        g = int(ranks_per_node)
        intra, inter = tuple(map(float, intra)), tuple(map(float, inter))
        return cls(alpha=inter[0], beta=inter[1], links=_TwoLevel(g, intra, inter), **kwargs)

    @classmethod
    def preset(cls, name, **kwargs):
        """A named cluster: "DGX-A100" (8 A100s a node on NVLink3, 300 GB/s each way per
        GPU; one 200 Gb/s HDR InfiniBand NIC per GPU between nodes) or "DGX-H100" (NVLink4,
        450 GB/s; 400 Gb/s NDR). Figures and sources: ``mlscale.meta.hardware.CLUSTERS``.
        Ranks are numbered node by node; each GPU's NIC is its own port (a rail)."""
        from ..meta.hardware import cluster_network  # lazy: the presets live with the accelerators

        return cluster_network(name, **kwargs)

    @property
    def ranks_per_node(self):
        """Ranks per node of a :meth:`cluster` model; None for a flat network."""
        return self.links.ranks_per_node if isinstance(self.links, _TwoLevel) else None

    def link(self, src: int, dst: int):
        """(alpha, beta) of the link src -> dst."""
        if self.links is None:
            return self.alpha, self.beta
        if callable(self.links):
            return self.links(src, dst)
        return self.links.get((src, dst), (self.alpha, self.beta))

    def message_time(self, src: int, dst: int, nbytes: int) -> float:
        a, b = self.link(src, dst)
        return a + nbytes * b

    def speed(self, rank: int) -> float:
        if self.speeds is None:
            return 1.0
        if isinstance(self.speeds, Mapping):
            s = self.speeds.get(rank, 1.0)
        else:
            s = self.speeds[rank]
        if s <= 0:
            raise ValueError(f"NetworkModel.speeds[{rank}]={s!r} must be > 0")
        return float(s)

    def validate(self, world_size: int):
        for r in self.failures:
            if not (0 <= r < world_size):
                raise ValueError(f"NetworkModel.failures names rank {r}, but world_size is {world_size}")
        for s, d in self.drops:
            if not (0 <= s < world_size and 0 <= d < world_size):
                raise ValueError(f"NetworkModel.drops names link ({s}, {d}) outside 0..{world_size - 1}")
        if self.speeds is not None and not isinstance(self.speeds, Mapping) and len(self.speeds) != world_size:
            raise ValueError(f"NetworkModel.speeds has {len(self.speeds)} entries for {world_size} ranks")
        for r in range(world_size):
            self.speed(r)


@dataclass(frozen=True)
class _TwoLevel:
    """links= of NetworkModel.cluster: fast inside a node, slow between nodes (a class,
    not a lambda, so a model pickles for the mpi engine and prints readably)."""

    ranks_per_node: int
    intra: tuple
    inter: tuple

    def __call__(self, src, dst):
        same = src // self.ranks_per_node == dst // self.ranks_per_node
        return self.intra if same else self.inter
