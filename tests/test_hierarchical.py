"""Hierarchical (two-level) all-reduce and the cluster network model: oracle sums,
virtual time = the two-level cost model, bytes on the slow links, clear errors."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import hierarchical as H
from mlscale.comm.errors import CommError

INTRA, INTER = (1e-6, 1 / 200e9), (5e-6, 1 / 25e9)
LAYOUTS = [(1, 1), (2, 1), (1, 3), (3, 1), (2, 2), (2, 3), (3, 2), (4, 2), (2, 4), (1, 5)]  # (nodes, ranks_per_node)


def _input(rank, n, dtype):
    rng = np.random.default_rng(100 + rank)
    return (rng.integers(-50, 50, size=n)).astype(dtype)


def _reduce(xs, op):
    stack = np.stack(xs)
    return {"sum": stack.sum(0), "mean": stack.mean(0), "max": stack.max(0), "min": stack.min(0)}[op]


def _program(comm, g, n, dtype, op):
    h = H.Hierarchy(comm, g)
    return h.all_reduce(_input(comm.rank, n, dtype), op=op)


@pytest.mark.parametrize("nodes,g", LAYOUTS)
@pytest.mark.parametrize("n", [1, 3, 7, 50])
def test_equals_the_sum_over_ranks(nodes, g, n):
    p = nodes * g
    for dtype, op in [(np.float64, "sum"), (np.float32, "mean"), (np.int32, "max"), (np.float64, "min")]:
        res = ms.launch(_program, p, args=(g, n, dtype, op))
        want = _reduce([_input(r, n, dtype) for r in range(p)], op)
        for r, got in enumerate(res):
            assert got.shape == (n,) and got.dtype == np.dtype(dtype), (r, got.dtype)
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"rank {r} of {nodes}x{g}, {op}")


def test_keeps_the_shape():
    def prog(comm):
        x = np.full((3, 5), comm.rank + 1.0)
        return H.all_reduce(comm, x, ranks_per_node=2)

    for got in ms.launch(prog, 4):
        assert got.shape == (3, 5) and np.all(got == 10.0)


def _timed(comm, g, n, algo):
    x = np.ones(n, np.float32)
    h = H.Hierarchy(comm, g) if algo == "hierarchical" else None
    t0 = comm.clock
    if h is not None:
        h.all_reduce(x)
    else:
        comm.all_reduce(x, algorithm="ring")
    return comm.clock - t0


@pytest.mark.parametrize("nodes,g", [(2, 4), (4, 2), (3, 2), (2, 3), (1, 4)])
def test_virtual_time_is_the_two_level_model(nodes, g):
    p = nodes * g
    net = ms.NetworkModel.cluster(g, intra=INTRA, inter=INTER)
    for n in (p * 16, p * 65536):  # below and above the eager limit
        t_h = max(ms.launch(_timed, p, args=(g, n, "hierarchical"), network=net))
        t_r = max(ms.launch(_timed, p, args=(g, n, "ring"), network=net))
        assert t_h == pytest.approx(H.cost(nodes, g, 4 * n, INTRA, INTER), rel=1e-9)
        assert t_r == pytest.approx(H.flat_ring_cost(nodes, g, 4 * n, INTRA, INTER), rel=1e-9)
        if nodes > 1 and g > 1:
            assert t_h < t_r  # fewer slow steps, and g slow links at once


def test_two_nodes_of_four_is_about_four_times_faster_for_large_vectors():
    # flat: 2(p-1)/p n b_s = 1.75 n b_s; hierarchical: about (2(N-1)/N) n/g b_s = n/4 b_s + NVLink steps
    n = 8 << 20
    ratio = H.flat_ring_cost(2, 4, n, INTRA, INTER) / H.cost(2, 4, n, INTRA, INTER)
    assert 3.5 < ratio < 7.0


def test_bytes_on_the_slow_links():
    nodes, g, n = 2, 4, 8 * 1024
    p = nodes * g
    net = ms.NetworkModel.cluster(g)
    for algo in ("hierarchical", "ring"):
        res = ms.launch(_timed, p, args=(g, n, algo), network=net)
        slow = [0] * p
        for m in res.trace.messages:
            if m.src // g != m.dst // g:
                slow[m.src] += m.nbytes
        want = H.slow_link_bytes(nodes, g, 4 * n, algo)
        if algo == "hierarchical":
            assert slow == [want] * p  # every rank uses its own network card, 1/g of the data
        else:
            # only the last rank of each node talks across: a flat ring uses 1 of g cards
            assert sorted(slow) == [0] * (p - nodes) + [want] * nodes
            assert [r for r in range(p) if slow[r]] == [g - 1 + k * g for k in range(nodes)]


def test_cluster_model_links():
    net = ms.NetworkModel.cluster(4, intra=(1e-6, 1e-11), inter=(1e-5, 1e-10))
    assert net.ranks_per_node == 4
    assert net.link(0, 3) == (1e-6, 1e-11) and net.link(3, 4) == (1e-5, 1e-10) and net.link(7, 4) == (1e-6, 1e-11)
    assert ms.NetworkModel().ranks_per_node is None
    with pytest.raises(ValueError, match="ranks_per_node"):
        ms.NetworkModel.cluster(0)
    with pytest.raises(ValueError, match="intra"):
        ms.NetworkModel.cluster(2, intra=(1e-6,))


def test_world_size_not_a_whole_number_of_nodes():
    def prog(comm):
        H.Hierarchy(comm, 4)

    with pytest.raises(CommError, match=r"world_size 6 is not a whole number of nodes of 4 ranks.*\[1, 2, 3, 6\]"):
        ms.launch(prog, 6)
    with pytest.raises(ValueError, match="ranks_per_node"):
        ms.launch(lambda comm: H.Hierarchy(comm, 1.5), 2)


def test_mismatched_lengths_between_ranks_is_an_error_not_a_hang():
    def prog(comm):
        h = H.Hierarchy(comm, 2)
        return h.all_reduce(np.ones(8 + (comm.rank == 3), np.float32))

    with pytest.raises(CommError, match=r"global ranks \[2, 3\].*global rank 3\) passed \(9,\)"):
        ms.launch(prog, 4, timeout=20)


def test_slow_link_bytes_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm 'tree'"):
        H.slow_link_bytes(2, 2, 100, "tree")


@pytest.mark.mpi
def test_on_mpi_processes():
    pytest.importorskip("mpi4py", reason='needs mpi4py and mpiexec: pip install "mlscale[mpi]"')
    res = ms.launch(_program, 4, args=(2, 7, np.float64, "sum"), backend="mpi", timeout=120)
    want = _reduce([_input(r, 7, np.float64) for r in range(4)], "sum")
    for got in res:
        np.testing.assert_allclose(got, want)


# ---------------------------------------------------------------- the exercise checker
def test_checker_accepts_the_solution_and_the_library():
    from mlscale.check.cluster import hierarchical_all_reduce, solution_hierarchical_all_reduce

    assert hierarchical_all_reduce(solution_hierarchical_all_reduce, verbose=False).passed
    assert hierarchical_all_reduce(lambda comm, x, g: H.all_reduce(comm, x, g), verbose=False).passed


def test_checker_rejects_wrong_answers():
    from mlscale.check.cluster import hierarchical_all_reduce
    from mlscale.check.cluster import solution_hierarchical_all_reduce as check_solution

    def stub(comm, x, g):
        raise NotImplementedError

    def flat_ring(comm, x, g):
        return comm.all_reduce(x, algorithm="ring")

    def flat_doubling(comm, x, g):
        return comm.all_reduce(x, algorithm="recursive_doubling")

    def node_only(comm, x, g):  # forgets the inter-node stage
        node, local = divmod(comm.rank, g)
        return comm.split(node, key=local).all_reduce(x)

    def leader_only(comm, x, g):  # reduce to local rank 0, leaders all-reduce, broadcast: 1 card per node
        node, local = divmod(comm.rank, g)
        intra = comm.split(node, key=local)
        inter = comm.split(local, key=node)
        s = intra.reduce(x, root=0)
        if local == 0:
            s = inter.all_reduce(s, algorithm="ring")
        return intra.broadcast(s if local == 0 else x, root=0)

    r = hierarchical_all_reduce(stub, verbose=False)
    assert r.not_implemented and not r.passed
    r = hierarchical_all_reduce(flat_ring, verbose=False)
    assert not r.passed and any("crossed between nodes" in f for f in r.failures)
    r = hierarchical_all_reduce(flat_doubling, verbose=False)
    assert not r.passed and any("crossed between nodes" in f for f in r.failures)
    r = hierarchical_all_reduce(node_only, verbose=False)
    assert not r.passed and any("the sum over ranks" in f for f in r.failures)
    # the leader scheme is right and sends few bytes across: accepted, with a note on idle cards
    r = hierarchical_all_reduce(leader_only, verbose=False)
    assert r.passed, r.summary()
    assert any("only some ranks used their network card" in n for n in r.notes), r.notes
    r = hierarchical_all_reduce(check_solution, verbose=False)
    assert r.passed and not r.notes


def test_cross_node_bytes_reads_the_trace():
    g, n = 2, 1000
    res = ms.launch(_timed, 4, args=(g, n, "hierarchical"), network=ms.NetworkModel.cluster(g))
    want = [0] * 4
    for m in res.trace.messages:
        if m.src // g != m.dst // g:
            want[m.src] += m.nbytes
    assert H.cross_node_bytes(res.trace, g) == want == [H.slow_link_bytes(2, g, 4 * n)] * 4
