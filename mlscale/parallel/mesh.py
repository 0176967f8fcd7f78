"""The device mesh: the ranks of one communicator laid out on an N-D grid with named dims.

    mesh = Mesh(comm, {"dp": 2, "pp": 2, "tp": 2})      # 8 ranks; tp fastest (default)
    mesh.coords                  # {"dp": 1, "pp": 0, "tp": 1} on rank 5
    mesh.coord("tp")             # 1
    mesh["tp"]                   # the tp sub-communicator: ranks that differ only in tp
    mesh.comm("dp", "tp")        # the ranks that differ only in dp and tp (same pp)
    print(mesh.describe())       # rank -> coordinates, one row per rank

Dims are given as ONE ordered mapping ``{name: size}``, slowest first: the mesh shape
reads left to right as in torch's ``init_device_mesh("cuda", (2, 2, 2),
mesh_dim_names=("dp", "pp", "tp"))`` (Paszke et al.; torch.distributed DeviceMesh).

Rank order. ``order=None`` (default) is row-major, the LAST dim fastest, torch
DeviceMesh's convention: ``rank = (dp_i * pp + pp_i) * tp + tp_i``, so tp neighbours are
adjacent ranks (one node, NVLink). ``order`` names the dims fastest first, as Megatron-LM
writes it: ``order="tp-dp-pp"`` gives ``rank = (pp_i * dp + dp_i) * tp + tp_i``.
``order="megatron"`` is Megatron-LM's default ``RankGenerator`` order "tp-cp-ep-dp-pp"
(Shoeybi et al. 2019; Narayanan et al. 2021), restricted to the dims the mesh has.

Sub-communicators are built with ``comm.split`` (MPI_Comm_split), which is collective:
``Mesh(...)`` builds EVERY one (each dim and each combination of dims, 2^N - 1 in all)
in the same order on every rank, so asking for one later never needs the other ranks.
In ``mesh.comm(*dims)`` the ranks keep their global order (``key=comm.rank``); for one
dim the sub-rank is that dim's coordinate.
"""
from __future__ import annotations

from itertools import combinations
from math import prod

MEGATRON_ORDER = ("tp", "cp", "ep", "dp", "pp")  # Megatron-LM RankGenerator's default, fastest first


def _parse_order(dims, order):
    """The dims fastest first, from ``order`` (None, "megatron", "tp-dp-pp" or a tuple)."""
    if order is None:
        return tuple(reversed(dims))
    if isinstance(order, str) and order.lower() == "megatron":
        unknown = [d for d in dims if d not in MEGATRON_ORDER]
        if unknown:
            raise ValueError(f"Mesh(order='megatron'): dims {unknown} are not in Megatron-LM's order "
                             f"{'-'.join(MEGATRON_ORDER)}; name the order yourself, fastest first, "
                             f"e.g. order={'-'.join(dims[::-1])!r}")
        return tuple(d for d in MEGATRON_ORDER if d in dims)
    names = tuple(order.split("-")) if isinstance(order, str) else tuple(order)
    if sorted(names) != sorted(dims):
        raise ValueError(f"Mesh(order={order!r}): the order must name every dim of the mesh {list(dims)} once, "
                         f"fastest first, e.g. {'-'.join(dims[::-1])!r}")
    return names


def mesh_layout(sizes, order=None):
    """``[{dim: coordinate} for rank in range(world_size)]`` of a mesh of ``sizes``
    ({name: size}, slowest first) in ``order`` (see the module docstring); no comm needed."""
    dims, shape = _check_sizes(sizes)
    fastest_first = _parse_order(dims, order)
    out = []
    for rank in range(prod(shape)):
        c, r = {}, rank
        for d in fastest_first:
            c[d], r = r % sizes[d], r // sizes[d]
        out.append({d: c[d] for d in dims})
    return out


def _check_sizes(sizes, world_size=None):
    if not hasattr(sizes, "items"):
        raise TypeError(f"Mesh sizes must be a mapping {{dim name: size}}, slowest dim first, e.g. "
                        f"{{'dp': 2, 'tp': 2}}; got {type(sizes).__name__} {sizes!r}")
    if not sizes:
        raise ValueError("Mesh needs at least one dim, e.g. {'dp': world_size}")
    dims = tuple(sizes)
    for d, n in sizes.items():
        if not isinstance(d, str) or not d or "-" in d:
            raise ValueError(f"Mesh dim name {d!r}: use a non-empty string without '-' (e.g. 'dp', 'tp')")
        if isinstance(n, bool) or not hasattr(n, "__index__") or int(n) < 1:
            raise ValueError(f"Mesh: {d}={n!r} must be a whole number >= 1")
    shape = tuple(int(n) for n in sizes.values())
    if world_size is not None and prod(shape) != world_size:
        expr = " x ".join(dims) + " = " + " x ".join(map(str, shape))
        raise ValueError(f"Mesh {dict(zip(dims, shape))}: {expr} = {prod(shape)} ranks, but the communicator has "
                         f"world_size={world_size}; pick sizes whose product is {world_size}")
    return dims, shape


class Mesh:
    """An N-D mesh of the ranks of ``comm`` with named dims (see the module docstring).

    comm     any Communicator (sim, mpi, nccl); its world_size must be the product of sizes
    sizes    ``{name: size}``, slowest first, e.g. ``{"dp": 2, "pp": 2, "tp": 2}``
    order    None (row-major, last dim fastest: torch DeviceMesh), ``"megatron"``, or the
             dims fastest first (``"tp-dp-pp"`` or a tuple)
    """

    def __init__(self, comm, sizes, order=None):
        self.dims, self.shape = _check_sizes(sizes, comm.world_size)
        self.sizes = dict(zip(self.dims, self.shape))
        self.order = _parse_order(self.dims, order)  # fastest first
        self.rank, self.world_size, self._world = comm.rank, comm.world_size, comm
        self.layout = mesh_layout(self.sizes, self.order)
        self.coords = dict(self.layout[comm.rank])
        self._comms = {}
        for k in range(1, len(self.dims) + 1):  # every combination, the same order on every rank
            for group in combinations(self.dims, k):
                others = [d for d in self.dims if d not in group]
                color = 0
                for d in others:  # same coordinates on every other dim = same group
                    color = color * self.sizes[d] + self.coords[d]
                self._comms[group] = comm.split(color=color, key=comm.rank)

    # -- coordinates -------------------------------------------------------------------
    def coord(self, dim):
        """This rank's coordinate on ``dim``."""
        return self.coords[self._check_dim(dim)]

    def size(self, dim):
        """The number of ranks along ``dim``."""
        return self.sizes[self._check_dim(dim)]

    def rank_of(self, **coords):
        """The global rank at ``coords`` (every dim named), e.g. ``mesh.rank_of(dp=1, pp=0, tp=1)``."""
        if sorted(coords) != sorted(self.dims):
            raise ValueError(f"Mesh.rank_of({coords}): name every dim {list(self.dims)} once")
        rank, stride = 0, 1
        for d in self.order:
            if not 0 <= coords[d] < self.sizes[d]:
                raise ValueError(f"Mesh.rank_of: {d}={coords[d]} outside 0..{self.sizes[d] - 1}")
            rank += coords[d] * stride
            stride *= self.sizes[d]
        return rank

    def groups(self, *dims):
        """The global ranks of every sub-communicator of ``dims``: a list of rank lists,
        sorted by their first rank (as Megatron-LM lists its groups)."""
        key = self._key(dims)
        others = [d for d in self.dims if d not in key]
        by_color = {}
        for r, c in enumerate(self.layout):
            by_color.setdefault(tuple(c[d] for d in others), []).append(r)
        return sorted(by_color.values())

    # -- sub-communicators -------------------------------------------------------------
    def comm(self, *dims):
        """The sub-communicator of the ranks that differ only in ``dims`` (one or more)."""
        return self._comms[self._key(dims)]

    def __getitem__(self, dim):
        return self.comm(*(dim if isinstance(dim, tuple) else (dim,)))

    def _check_dim(self, dim):
        if dim not in self.sizes:
            raise KeyError(f"Mesh has no dim {dim!r}; its dims are {list(self.dims)}")
        return dim

    def _key(self, dims):
        if not dims:
            raise ValueError(f"Mesh.comm() needs at least one dim of {list(self.dims)}")
        for d in dims:
            self._check_dim(d)
        if len(set(dims)) != len(dims):
            raise ValueError(f"Mesh.comm{dims}: a dim is named twice")
        return tuple(d for d in self.dims if d in dims)

    # -- showing it --------------------------------------------------------------------
    def describe(self):
        """A table: one row per rank with its coordinates (see ``describe_mesh``)."""
        return describe_mesh(self.sizes, self.order)

    def __repr__(self):
        order = "-".join(self.order)
        return f"Mesh({self.sizes}, order={order!r}, rank={self.rank}, coords={self.coords})"


def describe_mesh(sizes, order=None):
    """The rank -> coordinates table of a mesh of ``sizes`` in ``order``, as text."""
    layout = mesh_layout(sizes, order)
    dims = list(sizes)
    fastest = "-".join(_parse_order(tuple(dims), order))
    width = max(4, len(str(len(layout) - 1)))
    lines = [f"mesh {dict(sizes)}, order {fastest} (fastest first)",
             "rank".rjust(width) + "  " + "  ".join(d.rjust(max(2, len(d))) for d in dims)]
    for r, c in enumerate(layout):
        lines.append(str(r).rjust(width) + "  " + "  ".join(str(c[d]).rjust(max(2, len(d))) for d in dims))
    return "\n".join(lines)


__all__ = ["Mesh", "MEGATRON_ORDER", "mesh_layout", "describe_mesh"]
