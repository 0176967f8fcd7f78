"""Topologies, mixing matrices, gossip and push-sum against closed forms (Xiao and Boyd
2004, Ying et al. 2021, REFERENCES.md "Gossip and consensus") and NumPy oracles."""
import math

import numpy as np
import pytest

import mlscale as ms
from mlscale.check import decentralized as chk
from mlscale.decentralized import gossip_naive
from mlscale.decentralized import gossip as gossip_fn
from mlscale.decentralized import mixing as M
from mlscale.decentralized import push_sum
from mlscale.decentralized import topology as T

SIZES = [1, 2, 3, 4, 5, 8]


# ---------------------------------------------------------------- topologies
def test_ring_torus_complete_star_neighbors():
    r = T.ring(5)
    assert r.neighbors(0) == (1, 4) and r.degrees() == [2] * 5 and not r.directed
    assert T.ring(2).neighbors(0) == (1,) and T.ring(1).neighbors(0) == ()
    t = T.torus(12)
    assert t.shape == (3, 4) and t.degrees() == [4] * 12
    assert t.neighbors(0) == (1, 3, 4, 8)            # (0,0): right, left (wrap), down, up (wrap)
    assert T.complete(4).degrees() == [3] * 4
    s = T.star(5)
    assert s.degrees() == [4, 1, 1, 1, 1] and s.neighbors(3) == (0,)


def test_exponential_graphs():
    e = T.exponential(8)
    assert e.directed and e.out_neighbors(0) == (1, 2, 4) and e.in_neighbors(0) == (4, 6, 7)
    assert sorted(T.exponential(5).out_neighbors(3)) == [0, 2, 4]   # 3 + 1, 3 + 2, 3 + 4 (mod 5)
    o = T.one_peer_exponential(8)
    assert o.period == 3 and o.time_varying
    assert [o.out_neighbors(5, t) for t in range(4)] == [(6,), (7,), (1,), (6,)]   # 5 + 2^(t mod 3)
    assert [o.in_neighbors(5, t) for t in range(3)] == [(4,), (3,), (1,)]


def test_erdos_renyi_is_seeded_and_connected():
    a, b = T.erdos_renyi(12, 0.3, seed=5), T.erdos_renyi(12, 0.3, seed=5)
    assert np.array_equal(a.adjacency(), b.adjacency()) and a.is_connected() and not a.directed
    assert not np.array_equal(a.adjacency(), T.erdos_renyi(12, 0.3, seed=6).adjacency())


def test_topology_errors_say_what_to_do():
    with pytest.raises(ValueError, match="a, b >= 3"):
        T.torus(8)
    with pytest.raises(ValueError, match="a x b"):
        T.torus(12, shape=(2, 6))
    with pytest.raises(ValueError, match="not a power of two.*use 4 or 8"):
        T.one_peer_exponential(6)
    with pytest.raises(ValueError, match="world_size"):
        T.ring(0)
    with pytest.raises(ValueError, match="raise prob"):
        T.erdos_renyi(30, 0.01, max_tries=3)
    with pytest.raises(ValueError, match="has 4"):
        T.make_topology(T.ring(5), 4)
    with pytest.raises(ValueError, match="unknown topology"):
        T.make_topology("hypercube", 4)


# ---------------------------------------------------------------- mixing matrices
def test_weight_rules_by_hand():
    W = M.metropolis_hastings(T.star(4))                 # d = (3, 1, 1, 1): 1/max = 1/3
    np.testing.assert_allclose(W[0], [0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(W[1], [1 / 3, 2 / 3, 0, 0])
    W = M.metropolis(T.star(4))                          # 1/(1 + 3)
    np.testing.assert_allclose(W[0], [1 / 4, 1 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(W[2], [1 / 4, 0, 3 / 4, 0])
    np.testing.assert_allclose(M.uniform(T.ring(6))[0], [1 / 3, 1 / 3, 0, 0, 0, 1 / 3])
    np.testing.assert_allclose(M.lazy(M.metropolis_hastings(T.ring(4)))[0], [0.5, 0.25, 0, 0.25])
    np.testing.assert_allclose(M.uniform(T.complete(5)), np.full((5, 5), 0.2))


@pytest.mark.parametrize("topo", [T.ring(6), T.ring(7), T.torus(16), T.star(6), T.complete(5),
                                  T.erdos_renyi(10, 0.3, seed=2), T.exponential(6), T.exponential(8)],
                         ids=lambda t: t.name)
def test_every_rule_gives_a_valid_mixing_matrix(topo):
    rules = ["uniform"] if topo.directed else ["metropolis_hastings", "metropolis", "lazy_metropolis"]
    for rule in rules:
        W = topo.mixing_matrix(rule)
        M.validate_mixing_matrix(W, topo)
        np.testing.assert_allclose(W.sum(0), 1)
        np.testing.assert_allclose(W.sum(1), 1)


def test_validator_rejects_each_kind_of_wrong_matrix():
    topo = T.ring(5)
    W = topo.mixing_matrix()
    bad_rows = W.copy()
    bad_rows[0, 0] += 0.1
    with pytest.raises(ValueError, match="row 0 sums to 1.1"):
        M.validate_mixing_matrix(bad_rows, topo)
    col = W.copy()
    col[0] = [0.2, 0.4, 0, 0, 0.4]                       # rows fine, columns not
    with pytest.raises(ValueError, match="column .* keeps the average"):
        M.validate_mixing_matrix(col, topo)
    M.validate_mixing_matrix(col, topo, doubly_stochastic=False)
    neg = W.copy()
    neg[0, :2] = [1.5, -0.5 + 1 / 3]
    with pytest.raises(ValueError, match="negative"):
        M.validate_mixing_matrix(neg)
    with pytest.raises(ValueError, match="not a neighbor"):
        M.validate_mixing_matrix(np.full((5, 5), 0.2), topo)
    with pytest.raises(ValueError, match="should carry weight"):
        M.validate_mixing_matrix(np.eye(5), topo)
    with pytest.raises(ValueError, match="square"):
        M.validate_mixing_matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match="directed"):
        M.metropolis(T.exponential(8))
    with pytest.raises(ValueError, match="regular"):
        M.uniform(T.star(5))
    with pytest.raises(ValueError, match="unknown mixing rule"):
        topo.mixing_matrix("max_degree")


# ---------------------------------------------------------------- spectral closed forms
@pytest.mark.parametrize("p", [3, 4, 5, 8, 13, 32])
def test_ring_gap_closed_form(p):
    W = T.ring(p).mixing_matrix("metropolis")            # weights 1/3
    assert np.allclose(W[0, [0, 1, p - 1]], 1 / 3)
    assert M.spectral_gap(W) == pytest.approx((2 / 3) * (1 - math.cos(2 * math.pi / p)), abs=1e-12)


@pytest.mark.parametrize("p", [9, 16, 25, 36, 64])
def test_torus_gap_closed_form(p):
    W = T.torus(p).mixing_matrix("metropolis")           # weights 1/5
    assert np.allclose(W[0][W[0] > 0], 1 / 5)
    assert M.spectral_gap(W) == pytest.approx((2 / 5) * (1 - math.cos(2 * math.pi / math.sqrt(p))), abs=1e-12)


@pytest.mark.parametrize("p", [2, 4, 8, 16, 32, 64])
def test_static_exponential_rho_closed_form(p):
    W = T.exponential(p).mixing_matrix()                 # weights 1/(tau + 1)
    assert np.allclose(W[0][W[0] > 0], 1 / (1 + math.log2(p)))
    assert M.consensus_rate(W) == pytest.approx(1 - 2 / (1 + math.log2(p)), abs=1e-12)


@pytest.mark.parametrize("p", [2, 4, 8, 16, 64])
def test_one_peer_exponential_averages_exactly_in_log2_p_rounds(p):
    topo = T.one_peer_exponential(p)
    tau = int(math.log2(p))
    np.testing.assert_allclose(M.period_matrix(topo), np.full((p, p), 1 / p), atol=1e-15)
    if p > 2:                                            # one round fewer is not the average
        assert np.abs(M.period_matrix(topo, rounds=tau - 1) - 1 / p).max() >= 1 / p - 1e-12
    errs = M.consensus_errors(topo, np.random.default_rng(0).standard_normal((p, 3)), tau)
    assert errs[-1] < 1e-14 and (p == 2 or errs[-2] > 1e-3)


@pytest.mark.parametrize("p", [4, 6, 10])
def test_metropolis_hastings_on_an_even_ring_never_converges(p):
    W = T.ring(p).mixing_matrix("metropolis_hastings")   # 1/2, 1/2, diagonal 0: bipartite
    assert M.consensus_rate(W) == pytest.approx(1.0, abs=1e-12)
    assert M.rounds_to_eps(W, 1e-3) == math.inf
    x0 = np.array([(-1.0) ** i for i in range(p)])       # the -1 eigenvector: swaps forever
    errs = M.consensus_errors(W, x0, 200)
    assert errs[-1] == pytest.approx(1.0)
    lazy = T.ring(p).mixing_matrix("lazy_metropolis_hastings")
    assert M.consensus_rate(lazy) < 1 and M.consensus_errors(lazy, x0, 200)[-1] < 1e-6
    assert M.consensus_rate(T.ring(p + 1).mixing_matrix("metropolis_hastings")) < 1   # odd ring is fine


def test_rounds_to_eps_formula_and_simulation_agree():
    W = T.ring(9).mixing_matrix()
    rho = M.consensus_rate(W)
    assert M.rounds_to_eps(W, 1e-6) == pytest.approx(math.log(1e6) / math.log(1 / rho))
    errs = M.consensus_errors(W, np.random.default_rng(1).standard_normal(9), 400)
    # the error shrinks by rho per round asymptotically (symmetric W: and never faster than
    # the second eigenvalue allows once the others have died out)
    assert errs[80] / errs[79] == pytest.approx(rho, rel=1e-6)
    assert M.rounds_to_eps(M.uniform(T.complete(4)), 1e-9) == 0.0
    with pytest.raises(ValueError, match="eps"):
        M.rounds_to_eps(W, 2.0)


# ---------------------------------------------------------------- gossip on a Communicator
TOPOS = {
    "ring": T.ring, "star": T.star, "complete": T.complete, "exponential": T.exponential,
    "erdos_renyi": lambda p: T.erdos_renyi(p, 0.5, seed=p),
}


@pytest.mark.parametrize("name", list(TOPOS))
@pytest.mark.parametrize("p", SIZES)
def test_gossip_equals_matrix_power_oracle(name, p):
    topo = TOPOS[name](p)
    X = np.random.default_rng(p).standard_normal((p, 33))
    W = topo.mixing_matrix()
    rounds = 4

    def prog(comm):
        return gossip_fn(comm, X[comm.rank].copy(), topo, rounds=rounds)

    res = ms.launch(prog, p)
    np.testing.assert_allclose(np.stack(res), np.linalg.matrix_power(W, rounds) @ X, rtol=1e-12, atol=1e-12)
    sent = res.trace.per_rank_bytes(label="gossip")       # degree messages of n numbers per round
    assert sent == [rounds * topo.degree(r) * 33 * 8 for r in range(p)]
    assert all(m.label == "gossip" for m in res.trace.messages)   # no collective
    counts = [sum(m.src == r for m in res.trace.messages) for r in range(p)]
    assert counts == [rounds * topo.degree(r) for r in range(p)]


@pytest.mark.parametrize("p", [9, 12])
def test_gossip_on_a_torus_and_the_lazy_rule(p):
    topo = T.torus(p)
    X = np.random.default_rng(p).standard_normal((p, 5)).astype(np.float32)
    W = topo.mixing_matrix("lazy_metropolis")
    res = ms.launch(lambda c: gossip_fn(c, X[c.rank].copy(), topo, mixing="lazy_metropolis", rounds=3), p)
    np.testing.assert_allclose(np.stack(res), np.linalg.matrix_power(W, 3) @ X, rtol=1e-5, atol=1e-6)
    assert res[0].dtype == np.float32


@pytest.mark.parametrize("p", [2, 4, 8])
def test_gossip_one_peer_exponential_is_the_exact_average(p):
    topo = T.one_peer_exponential(p)
    X = np.random.default_rng(3).standard_normal((p, 10))
    tau = int(math.log2(p))
    res = ms.launch(lambda c: gossip_fn(c, X[c.rank].copy(), topo, rounds=tau), p)
    np.testing.assert_allclose(np.stack(res), np.tile(X.mean(0), (p, 1)), atol=1e-14)
    assert res.trace.per_rank_bytes() == [tau * 80] * p   # one message per round


@pytest.mark.parametrize("p", [3, 5, 8])
def test_gossip_equals_the_naive_all_gather_version(p):
    topo = T.erdos_renyi(p, 0.6, seed=1)
    W = topo.mixing_matrix()
    X = np.random.default_rng(0).standard_normal((p, 17))

    def prog(comm):
        x = X[comm.rank].copy()
        return gossip_fn(comm, x, topo), gossip_naive(comm, x, W)

    for fast, naive in ms.launch(prog, p):
        np.testing.assert_allclose(fast, naive, rtol=1e-13, atol=1e-14)


def test_gossip_above_the_eager_limit_does_not_deadlock_and_costs_degree_messages():
    p, n = 8, 40000                                       # 320 kB per message: rendezvous
    net = ms.NetworkModel(alpha=1e-5, beta=1e-9, eager_limit=65536)
    X = np.random.default_rng(1).standard_normal((p, n))
    for topo in (T.ring(p), T.exponential(p), T.complete(p)):
        res = ms.launch(lambda c, topo=topo: gossip_fn(c, X[c.rank].copy(), topo, rounds=2), p, network=net)
        np.testing.assert_allclose(res[3], np.linalg.matrix_power(topo.mixing_matrix(), 2)[3] @ X, rtol=1e-12, atol=1e-14)
        assert res.trace.per_rank_bytes() == [2 * topo.degree(0) * n * 8] * p


def test_gossip_round_bytes_vs_ring_all_reduce():
    p, n = 8, 1000
    X = np.random.default_rng(1).standard_normal((p, n))
    g = ms.launch(lambda c: gossip_fn(c, X[c.rank].copy(), "ring"), p)
    a = ms.launch(lambda c: c.all_reduce(X[c.rank].copy(), algorithm="ring"), p)
    assert g.trace.bytes_sent(rank=0) == 2 * n * 8                       # degree * nbytes
    assert a.trace.bytes_sent(rank=0) == 2 * (p - 1) * (n // p) * 8     # 2(p-1)/p * nbytes
    assert sum(m.src == 0 for m in g.trace.messages) == 2
    assert sum(m.src == 0 for m in a.trace.messages) == 2 * (p - 1)


def test_gossip_errors():
    with pytest.raises(TypeError, match="float"):
        ms.launch(lambda c: gossip_fn(c, np.arange(4), "ring"), 3)
    with pytest.raises(ValueError, match="not a neighbor"):
        ms.launch(lambda c: gossip_fn(c, np.ones(4), "ring", mixing=np.full((5, 5), 0.2)), 5)
    with pytest.raises(ValueError, match="changes every round"):
        ms.launch(lambda c: gossip_fn(c, np.ones(4), T.one_peer_exponential(4), mixing=np.eye(4)), 4)
    with pytest.raises(ValueError, match="power of two"):
        ms.launch(lambda c: gossip_fn(c, np.ones(4), "one_peer_exponential"), 6)


# ---------------------------------------------------------------- push-sum
@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_push_sum_on_a_directed_graph_matches_the_oracle_and_reaches_the_average(p):
    chords = [(0, p - 1)] if p > 2 else []
    topo = T.directed_ring(p, chords=chords)              # out-degrees differ: 2 at rank 0
    P = M.push_sum_weights(topo)
    X = np.random.default_rng(p).standard_normal((p, 6))
    rounds = 150

    res = ms.launch(lambda c: push_sum(c, X[c.rank].copy(), topo, rounds, return_weights=True), p)
    Pt = np.linalg.matrix_power(P, rounds)
    s, w = Pt @ X, Pt @ np.ones(p)
    for r, (z, s_r, w_r) in enumerate(res):
        np.testing.assert_allclose(s_r, s[r], rtol=1e-12)
        np.testing.assert_allclose(w_r, w[r], rtol=1e-12)
        np.testing.assert_allclose(z, X.mean(0), atol=1e-6)
    assert res.trace.per_rank_bytes() == [rounds * topo.degree(r) * 7 * 8 for r in range(p)]
    if chords:   # plain gossip with a row-stochastic matrix on this graph misses the average
        R = P / P.sum(axis=1, keepdims=True)
        assert np.abs(np.linalg.matrix_power(R, 200) @ X - X.mean(0)).max() > 1e-3


def test_push_sum_on_the_exponential_graph_and_errors():
    X = np.random.default_rng(0).standard_normal((6, 4))
    res = ms.launch(lambda c: push_sum(c, X[c.rank].copy(), "exponential", 40), 6)
    np.testing.assert_allclose(np.stack(res), np.tile(X.mean(0), (6, 1)), atol=1e-10)
    broken = T.from_edges(4, [(0, 1), (1, 2), (2, 3)], directed=True)
    with pytest.raises(ValueError, match="not strongly connected"):
        ms.launch(lambda c: push_sum(c, np.ones(3), broken, 5), 4)


# ---------------------------------------------------------------- exercise checkers
def test_checkers_accept_the_solutions():
    assert chk.metropolis_weights(chk.metropolis_weights_solution, verbose=False).passed
    assert chk.gossip_step(chk.gossip_step_solution, world_sizes=(1, 3, 4), verbose=False).passed


def test_checkers_reject_wrong_answers():
    def stub(*a):
        raise NotImplementedError

    r = chk.metropolis_weights(stub, verbose=False)
    assert r.not_implemented and "not implemented yet" in r.summary()
    r = chk.metropolis_weights(lambda A: M.metropolis_hastings(T.Topology("g", A)), verbose=False)
    assert not r.passed and "Metropolis-Hastings" in r.summary()
    r = chk.metropolis_weights(lambda A: np.where(A, 1 / 3, 0.0), verbose=False)     # no diagonal
    assert not r.passed and "diagonal" in r.summary()
    r = chk.metropolis_weights(lambda A: np.full(A.shape, 1 / len(A)), verbose=False)   # complete
    assert not r.passed and "not neighbors" in r.summary()

    def blocking(comm, x, topo, W):                      # send then recv: deadlocks above 64 KiB
        for k in topo.out_neighbors(comm.rank):
            comm.send(x, k)
        got = [comm.recv(j) for j in topo.in_neighbors(comm.rank)]
        return W[comm.rank, comm.rank] * x + sum(W[comm.rank, j] * g for j, g in zip(topo.in_neighbors(comm.rank), got))

    r = chk.gossip_step(blocking, world_sizes=(3,), verbose=False)
    assert not r.passed and "deadlock" in r.summary() and "post the receives first" in r.summary()

    def wrong_peer(comm, x, topo, W):                    # waits for a rank that is no neighbor
        p, r = comm.world_size, comm.rank
        sends = [comm.isend(x, k) for k in topo.out_neighbors(r)]
        got = comm.recv((r + 2) % p)
        for q in sends:
            q.wait()
        return x + got

    r = chk.gossip_step(wrong_peer, world_sizes=(5,), verbose=False)
    small = [f for f in r.failures if "ring(5), n=5" in f]
    assert not r.passed and small and "never sends to it" in small[0], r.failures
    assert "post the receives" not in small[0]

    def with_allgather(comm, x, topo, W):                # right values, wrong traffic
        X = comm.all_gather(x.reshape(1, -1))
        return W[comm.rank] @ X

    r = chk.gossip_step(with_allgather, world_sizes=(3,), verbose=False)
    assert not r.passed and "collective" in r.summary()

    def wrong_weights(comm, x, topo, W):                 # plain mean of neighbors
        out = chk.gossip_step_solution(comm, x, topo, W)
        return out * 0 + x
    r = chk.gossip_step(wrong_weights, world_sizes=(3,), verbose=False)
    assert not r.passed and "row" in r.summary()
    r = chk.gossip_step(stub, verbose=False)
    assert r.not_implemented
