"""The device mesh: coordinates in torch DeviceMesh's and Megatron-LM's rank orders, the
sub-communicator of every dim and combination of dims (membership and all_reduce results
checked against the layout), and clear errors for sizes that do not multiply."""
from itertools import combinations
from math import prod

import numpy as np
import pytest

import mlscale as ms
from mlscale.parallel import Mesh, describe_mesh, mesh_coords, mesh_layout

SHAPES = [{"dp": 4}, {"dp": 2, "tp": 2}, {"dp": 1, "tp": 3}, {"dp": 2, "pp": 2, "tp": 2},
          {"dp": 3, "pp": 1, "tp": 2}, {"pp": 2, "cp": 1, "dp": 2, "ep": 1, "tp": 1}, {"a": 1}]


def _probe(comm, sizes, order):
    """On every rank: its coords, and for every combination of dims the sub-communicator's
    size, sub-rank, and the all_reduce of the global ranks (sum) and of 1 (count)."""
    mesh = Mesh(comm, sizes, order=order)
    out = {"coords": mesh.coords, "coord": {d: mesh.coord(d) for d in mesh.dims}}
    for k in range(1, len(mesh.dims) + 1):
        for dims in combinations(mesh.dims, k):
            c = mesh.comm(*dims)
            total = c.all_reduce(np.array([float(comm.rank), 1.0]), algorithm="ring")
            members = c.all_gather(np.array([comm.rank]))
            out[dims] = (c.world_size, c.rank, total.tolist(), members.tolist())
    out["tp_item"] = mesh[mesh.dims[-1]].world_size
    return out


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "x".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("order", [None, "reversed"])
def test_mesh_on_sim(sizes, order):
    dims = tuple(sizes)
    order = dims if order == "reversed" else None  # "reversed": first dim fastest
    p = prod(sizes.values())
    res = ms.launch(_probe, p, args=(sizes, order))
    layout = mesh_layout(sizes, order)
    fastest = dims[::-1] if order is None else dims
    for rank, r in enumerate(res):
        assert r["coords"] == r["coord"] == layout[rank]
        # the rank is the mixed-radix number of its coordinates, `fastest` digit first
        want, stride = 0, 1
        for d in fastest:
            want += r["coords"][d] * stride
            stride *= sizes[d]
        assert want == rank
        for k in range(1, len(dims) + 1):
            for sub in combinations(dims, k):
                size, sub_rank, (rank_sum, count), members = r[sub]
                # the group: every rank that agrees with me on the dims NOT in sub
                group = [q for q in range(p) if all(layout[q][d] == layout[rank][d] for d in dims if d not in sub)]
                assert size == count == len(group) == prod(sizes[d] for d in sub)
                assert members == group  # global order kept
                assert sub_rank == group.index(rank)
                assert rank_sum == sum(group)
                if k == 1:
                    assert sub_rank == r["coords"][sub[0]]
    if order is None:  # the row-major default matches three_d's helper
        assert [tuple(c.values()) for c in layout] == [mesh_coords(q, tuple(sizes.values())) for q in range(p)]


def test_torch_and_megatron_orders():
    sizes = {"dp": 2, "pp": 2, "tp": 2}
    torch_like = mesh_layout(sizes)  # rank = (dp * pp_size + pp) * tp_size + tp
    assert [(c["dp"], c["pp"], c["tp"]) for c in torch_like] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    mega = mesh_layout(sizes, "megatron")  # tp-dp-pp: rank = (pp * dp_size + dp) * tp_size + tp
    assert mega == mesh_layout(sizes, "tp-dp-pp") == mesh_layout(sizes, ("tp", "dp", "pp"))
    assert [(c["dp"], c["pp"], c["tp"]) for c in mega] == [
        (0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 1, 0), (0, 1, 1), (1, 1, 0), (1, 1, 1)]
    # Megatron-LM's initialize_model_parallel docstring: 16 GPUs, tp=2, pp=4 (so dp=2)
    big = {"dp": 2, "pp": 4, "tp": 2}
    res = ms.launch(lambda c: {d: Mesh(c, big, "megatron").groups(d) for d in big}, 16)
    assert res[0]["dp"] == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert res[0]["pp"] == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
    assert res[0]["tp"] == [[2 * i, 2 * i + 1] for i in range(8)]
    # torch's row-major order puts pp inside dp instead
    res = ms.launch(lambda c: Mesh(c, sizes).groups("pp"), 8)
    assert res[0] == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_describe_and_rank_of():
    text = describe_mesh({"dp": 2, "tp": 2})
    assert text.splitlines() == ["mesh {'dp': 2, 'tp': 2}, order tp-dp (fastest first)",
                                 "rank  dp  tp", "   0   0   0", "   1   0   1", "   2   1   0", "   3   1   1"]
    res = ms.launch(lambda c: (Mesh(c, {"dp": 3, "tp": 2}, "dp-tp").describe(),
                               [Mesh(c, {"dp": 3, "tp": 2}, "dp-tp").rank_of(dp=i, tp=j)
                                for i in range(3) for j in range(2)]), 6)
    assert "order dp-tp" in res[0][0] and res[0][1] == [0, 3, 1, 4, 2, 5]


def test_errors():
    with pytest.raises(ValueError, match=r"dp x tp = 2 x 3 = 6 ranks, but the communicator has world_size=4"):
        ms.launch(lambda c: Mesh(c, {"dp": 2, "tp": 3}), 4)
    with pytest.raises(ValueError, match="tp=0 must be a whole number"):
        mesh_layout({"dp": 2, "tp": 0})
    with pytest.raises(TypeError, match="mapping"):
        mesh_layout((2, 2))
    with pytest.raises(ValueError, match="name every dim"):
        mesh_layout({"dp": 2, "tp": 2}, "tp-pp")
    with pytest.raises(ValueError, match="not in Megatron-LM's order"):
        mesh_layout({"dp": 2, "xx": 2}, "megatron")
    with pytest.raises(KeyError, match="no dim 'pp'"):
        ms.launch(lambda c: Mesh(c, {"dp": 2}).comm("pp"), 2)
    with pytest.raises(ValueError, match="named twice"):
        ms.launch(lambda c: Mesh(c, {"dp": 2}).comm("dp", "dp"), 2)
