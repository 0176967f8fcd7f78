"""Aggregation rules on list[(arrays, num_examples)]: FedAvg, robust rules, DP, sampling."""
import numpy as np
import pytest

from mlscale import federated as fl
from mlscale.data import load_digits


def _results(k, shapes=((5, 3), (3,)), dtype=np.float64, seed=0, counts=None):
    rng = np.random.default_rng(seed)
    counts = counts or [int(c) for c in rng.integers(1, 100, size=k)]
    return [([rng.standard_normal(s).astype(dtype) for s in shapes], n) for n in counts]


# ---- FedAvg ---------------------------------------------------------------------------
def test_fedavg_hand_computed():
    results = [(np.array([1.0, 2.0]), 1), (np.array([4.0, 8.0]), 3)]
    np.testing.assert_array_equal(fl.fedavg_reference(results), [3.25, 6.5])   # (1 + 12)/4, (2 + 24)/4
    np.testing.assert_allclose(fl.fedavg(results), [3.25, 6.5], rtol=1e-15)
    np.testing.assert_array_equal(fl.mean(results), [2.5, 5.0])


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fedavg_fast_equals_reference(k, dtype):
    results = _results(k, dtype=dtype, seed=k)
    ref = fl.fedavg_reference(results)
    counts = np.array([n for _, n in results], dtype=np.float64)
    for impl in ("numba", "reference"):
        fast = fl.fedavg(results, impl=impl)
        assert [a.dtype for a in fast] == [dtype, dtype]
        for f, r, j in zip(fast, ref, range(2)):
            # the NumPy oracle, independent of both: sum_k n_k x_k / sum n_k
            oracle = sum(n * np.asarray(a[j], np.float64) for a, n in results) / counts.sum()
            np.testing.assert_allclose(r, oracle, rtol=1e-6 if dtype == np.float32 else 1e-14)
            np.testing.assert_allclose(f, r, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


def test_fedavg_single_array_and_zero_examples():
    x = [np.full(4, v, np.float32) for v in (1.0, 5.0, 9.0)]
    out = fl.fedavg([(x[0], 0), (x[1], 2), (x[2], 2)])   # a client with 0 examples has no say
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, 7.0)


def test_fedavg_errors():
    with pytest.raises(ValueError, match="no client results"):
        fl.fedavg([])
    with pytest.raises(TypeError, match="pass a LIST"):
        fl.fedavg((np.zeros(3), 5))
    with pytest.raises(ValueError, match=r"results\[1\] array 0 has shape \(4,\)"):
        fl.fedavg([(np.zeros(3), 1), (np.zeros(4), 1)])
    with pytest.raises(ValueError, match="num_examples=-1"):
        fl.fedavg([(np.zeros(3), -1)])
    with pytest.raises(ValueError, match="0 examples in all"):
        fl.fedavg([(np.zeros(3), 0), (np.ones(3), 0)])
    with pytest.raises(ValueError, match="results\\[1\\] has 1 arrays, results\\[0\\] has 2"):
        fl.fedavg([([np.zeros(3), np.zeros(2)], 1), ([np.zeros(3)], 1)])
    with pytest.raises(TypeError, match="float array"):
        fl.fedavg([(np.zeros(3, np.int64), 1)])


# ---- robust rules ------------------------------------------------------------------------
def test_median_trimmed_mean_values():
    xs = np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0], [3.0, 1.0], [4.0, 2.0]])
    results = [(x, 1) for x in xs]
    np.testing.assert_array_equal(fl.median(results), np.median(xs, axis=0))
    np.testing.assert_allclose(fl.trimmed_mean(results, 1), [3.0, 1.0])   # mean of (2,3,4), (0,1,2)


def test_krum_scores_fast_equals_double_loop():
    rng = np.random.default_rng(1)
    for n, f in [(4, 0), (5, 1), (8, 2), (11, 4)]:
        x = rng.standard_normal((n, 13))
        np.testing.assert_allclose(fl.krum_scores(x, f), fl.krum_scores_reference(x, f), rtol=1e-10)


def test_krum_hand_case():
    # four clustered clients and one far away: Krum scores by the n - f - 2 = 2 nearest
    xs = [np.array([0.0]), np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([50.0])]
    results = [(x, 1) for x in xs]
    assert fl.krum_select(results, f=1, m=5)[:2] == [1, 2]   # scores 1+1=2, 1+1=2; then 0 and 3: 1+4=5
    np.testing.assert_array_equal(fl.krum(results, f=1), [1.0])
    np.testing.assert_allclose(fl.multi_krum(results, f=1, m=2), [1.5])


def test_krum_errors():
    results = [(np.zeros(2), 1)] * 4
    with pytest.raises(ValueError, match=r"2f \+ 2 < n .* f=1 with n=4 clients"):
        fl.krum(results, f=1)
    with pytest.raises(ValueError, match="m \\(clients averaged"):
        fl.multi_krum([(np.zeros(2), 1)] * 5, f=1, m=6)
    with pytest.raises(ValueError, match="integer >= 0"):
        fl.krum(results, f=-1)


@pytest.mark.parametrize("n", [5, 7, 9])
def test_one_byzantine_client(n):
    """FedAvg follows the attacker anywhere; median, trimmed mean and Krum stay within the honest range."""
    rng = np.random.default_rng(n)
    honest = [rng.normal(1.0, 0.1, size=20) for _ in range(n - 1)]
    lo, hi = np.min(honest, axis=0), np.max(honest, axis=0)
    for scale in (1e3, 1e6, 1e9):
        bad = np.full(20, scale)
        results = [(h, 10) for h in honest] + [(bad, 10)]
        assert np.abs(fl.fedavg(results)).min() > scale / n / 2       # dragged as far as the attacker likes
        for agg in (fl.median(results), fl.trimmed_mean(results, 1), fl.krum(results, f=1),
                    fl.multi_krum(results, f=1, m=n - 2)):
            assert np.all(agg >= lo - 1e-12) and np.all(agg <= hi + 1e-12)
    # a linear rule can be steered to ANY target by one client (Blanchard et al. Lemma 1)
    target = np.full(20, -7.0)
    steer = (target * n - np.sum(honest, axis=0))
    np.testing.assert_allclose(fl.mean([(h, 1) for h in honest] + [(steer, 1)]), target, rtol=1e-12)


# ---- DP-FedAvg ---------------------------------------------------------------------------
def test_clip_update_exact():
    x = np.array([3.0, 4.0])                     # norm 5
    np.testing.assert_allclose(fl.clip_update(x, 1.0), [0.6, 0.8], rtol=1e-15)
    assert fl.clip_update(x, 5.0) is x           # at or under S: untouched
    parts = [np.array([3.0]), np.array([[4.0]])]
    out = fl.clip_update(parts, 2.5)             # the norm over all arrays together
    np.testing.assert_allclose([out[0][0], out[1][0, 0]], [1.5, 2.0], rtol=1e-15)
    rng = np.random.default_rng(0)
    for S in (0.1, 1.0, 7.0):
        for _ in range(5):
            v = rng.standard_normal(50) * 10
            c = fl.clip_update(v, S)
            assert fl.update_norm(c) == pytest.approx(min(S, np.linalg.norm(v)), rel=1e-12)
            np.testing.assert_allclose(c / np.linalg.norm(c), v / np.linalg.norm(v), rtol=1e-12)
    with pytest.raises(ValueError, match="clip_norm S"):
        fl.clip_update(x, 0)


def test_dp_fedavg_noise_std_and_mean():
    """sum of clipped updates + N(0, (z S)^2), divided by the number of clients."""
    S, z, k, d = 2.0, 1.5, 4, 40_000
    results = [(np.full(d, 10.0), 5)] * k          # norm 2000 each: clipped to S
    clipped = np.full(d, 10.0) * S / np.linalg.norm(np.full(d, 10.0))
    out = fl.dp_fedavg(results, S, z, seed=3)
    noise = out * k - k * clipped
    assert np.std(noise) == pytest.approx(z * S, rel=0.02)          # 40k samples: std within 2%
    assert abs(np.mean(noise)) < 5 * z * S / np.sqrt(d)
    np.testing.assert_array_equal(out, fl.dp_fedavg(results, S, z, seed=3))   # seeded
    assert not np.array_equal(out, fl.dp_fedavg(results, S, z, seed=4))
    np.testing.assert_allclose(fl.dp_fedavg(results, S, 0.0, seed=0), clipped, rtol=1e-12)   # z = 0: no noise
    with pytest.raises(ValueError, match="noise_multiplier"):
        fl.dp_fedavg(results, S, -1.0, seed=0)


# ---- sampling and partitions --------------------------------------------------------------
def test_sample_clients():
    for K, C, m in [(100, 0.1, 10), (10, 1.0, 10), (7, 0.01, 1), (30, 0.1, 3), (5, 0.5, 2)]:
        seen = set()
        for r in range(20):
            s = fl.sample_clients(K, C, r, seed=1)
            assert len(s) == m == fl.clients_per_round(K, C) and len(set(s)) == m   # no replacement
            assert s.min() >= 0 and s.max() < K and np.all(np.diff(s) > 0)
            seen |= set(s.tolist())
            np.testing.assert_array_equal(s, fl.sample_clients(K, C, r, seed=1))  # seeded
        assert len(seen) > min(K, 3 * m) - 1 or C == 1.0                        # rounds differ
    counts = np.bincount(np.concatenate([fl.sample_clients(20, 0.25, r) for r in range(2000)]), minlength=20)
    assert abs(counts / 2000 - 0.25).max() < 0.04                                  # uniform
    for C in (0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            fl.sample_clients(10, C, 0)


def test_partitions():
    _, y, _, _ = load_digits()
    for kind, kw in [("iid", {}), ("label_shards", {}), ("dirichlet", {"alpha": 0.5})]:
        parts = fl.partition(kind, y, 20, seed=0, **kw)
        assert len(parts) == 20
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    shards = fl.partition("label_shards", y, 20)
    assert max(len(np.unique(y[p])) for p in shards) <= 3       # 2 shards: at most 2 labels (+1 straddling)
    with pytest.raises(ValueError, match="2000 clients but only 1348 examples"):
        fl.partition("iid", y, 2000)
    with pytest.raises(ValueError, match="unknown kind"):
        fl.partition("sorted", y, 10)
    with pytest.raises(ValueError, match="needs alpha"):
        fl.partition("dirichlet", y, 10)
