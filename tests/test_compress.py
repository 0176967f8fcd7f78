"""mlscale.compress: the compressors' bytes, their maths (QSGD unbiased, PowerSGD exact
on low rank with a warm start) and error feedback's invariant."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.train.compressed import CompressedDataParallel
from mlscale import compress as C

SIZES = [1, 7, 128, 1000]


def _x(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


# ---- bytes on the wire ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_nbytes_are_the_exact_wire_formulas(n, dtype):
    x, v = _x(n, n, dtype), np.dtype(dtype).itemsize
    k = max(1, int(np.ceil(0.1 * n)))
    want = {
        C.Identity(): v * n,
        C.TopK(ratio=0.1): (4 + v) * k,                   # int32 index + value
        C.TopK(k=3): (4 + v) * min(3, n),
        C.RandomK(ratio=0.1): v * k,                      # values only: shared seed
        C.QSGD(levels=8): n + v,                          # int8 per element + the norm
        C.Sign(): (n + 7) // 8 + v,                       # packed bits + the scale
    }
    for comp, nbytes in want.items():
        p = comp.compress(x, key="w")
        assert comp.nbytes(p) == p.nbytes == nbytes, comp
        assert comp.ratio(p) == pytest.approx(v * n / nbytes)
        assert comp.decompress(p).shape == x.shape and comp.decompress(p).dtype == x.dtype


@pytest.mark.parametrize("shape,r", [((64, 10), 1), ((64, 10), 4), ((7, 5, 3), 2), ((33,), 2)])
def test_powersgd_bytes(shape, r):
    x = _x(int(np.prod(shape)), 3).reshape(shape)
    p = C.PowerSGD(rank=r).compress(x, key="w")
    n, m = shape[0], int(np.prod(shape[1:]))
    assert p.nbytes == (4 * r * (n + m) if len(shape) > 1 else 4 * n)   # biases go dense
    assert p.reduced == (("P",) if len(shape) > 1 else ())


def test_payload_dict_accounting_and_repr():
    comp = C.TopK(k=2)
    ps = comp.compress_many({"a": _x(10), "b": _x(20, 1)})
    assert comp.nbytes(ps) == 2 * 16 and comp.ratio(ps) == pytest.approx(120 / 32)
    assert "Payload" in repr(ps["a"]) and "16 B of 40" in repr(ps["a"])


# ---- top-k, random-k ------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
def test_topk_keeps_the_largest(n):
    x = _x(n, 5)
    comp = C.TopK(ratio=0.05)
    k = max(1, int(np.ceil(0.05 * n)))
    dense = comp.decompress(comp.compress(x))
    keep = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
    want = np.zeros_like(x)
    want[keep] = x[keep]
    np.testing.assert_array_equal(dense, want)


def test_randomk_shares_indices_between_ranks_not_steps():
    x = _x(1000)
    a, b = C.RandomK(ratio=0.01, seed=3).bind(0), C.RandomK(ratio=0.01, seed=3).bind(5)
    pa, pb = a.compress(x, "w"), b.compress(x, "w")
    np.testing.assert_array_equal(pa.meta["indices"], pb.meta["indices"])   # same on every rank
    assert "indices" not in pa.arrays and pa.nbytes == 40                   # so none are sent
    nxt = a.compress(x, "w").meta["indices"]
    assert not np.array_equal(nxt, pa.meta["indices"])                      # a new draw each step
    d = a.decompress(pa)
    assert np.count_nonzero(d) == 10 and np.array_equal(d[pa.meta["indices"]], x[pa.meta["indices"]])


# ---- QSGD: unbiased, variance bound ----------------------------------------------------
@pytest.mark.parametrize("levels", [1, 4])
def test_qsgd_is_unbiased_with_bounded_variance(levels):
    n, draws = 64, 3000
    x = _x(n, 11).astype(np.float64)
    comp = C.QSGD(levels=levels, seed=1)
    samples = np.stack([comp.decompress(comp.compress(x, "w")) for _ in range(draws)])
    nrm = np.linalg.norm(x)
    # each coordinate is norm/s times a Bernoulli step: its std is at most norm / (2 s)
    tol = 5 * (nrm / (2 * levels)) / np.sqrt(draws)
    assert np.abs(samples.mean(0) - x).max() < tol
    var = ((samples - x) ** 2).sum(1).mean()
    assert var <= min(n / levels**2, np.sqrt(n) / levels) * nrm**2      # Lemma 3.1
    # biased rounding (always down) is caught by the same test
    assert np.abs(np.floor(np.abs(x) / nrm * levels) * np.sign(x) * nrm / levels - x).max() > tol


def test_qsgd_ranks_draw_different_bits():
    x = _x(200)
    a, b = C.QSGD(levels=2, seed=0).bind(0), C.QSGD(levels=2, seed=0).bind(1)
    assert not np.array_equal(a.compress(x).arrays["q"], b.compress(x).arrays["q"])


# ---- sign ------------------------------------------------------------------------------
def test_sign_scale_and_majority_vote():
    x = _x(37, 2)
    comp = C.Sign()
    d = comp.decompress(comp.compress(x))
    np.testing.assert_allclose(d, np.where(x >= 0, 1, -1) * np.abs(x).mean(), rtol=1e-6)
    votes = [np.array([1.0, 1, -1, 1], np.float32) * s for s in (1, 2, 3)]
    votes[1][1] *= -1
    votes[2][1] *= -1
    mv = C.Sign(majority_vote=True).combine(votes)
    np.testing.assert_allclose(mv, np.array([1, -1, -1, 1]) * 2.0)     # sign of the votes, mean scale


# ---- PowerSGD ----------------------------------------------------------------------------
def _low_rank(n, m, rank, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m))


@pytest.mark.parametrize("true_rank", [1, 2, 3])
@pytest.mark.parametrize("ortho", ["gram_schmidt", "qr"])
def test_powersgd_is_exact_on_rank_at_most_r(true_rank, ortho):
    M = _low_rank(40, 17, true_rank, seed=true_rank)
    comp = C.PowerSGD(rank=3, orthogonalize=ortho)
    np.testing.assert_allclose(comp.decompress(comp.compress(M, "w")), M, rtol=1e-9, atol=1e-9)
    full = np.random.default_rng(0).standard_normal((40, 17))
    assert np.linalg.norm(comp.decompress(comp.compress(full, "v")) - full) > 0.3 * np.linalg.norm(full)


def test_gram_schmidt_equals_qr_up_to_signs():
    P = np.random.default_rng(1).standard_normal((30, 4))
    gs, qr = C.orthogonalize_gram_schmidt(P.copy()), C.orthogonalize_qr(P)
    np.testing.assert_allclose(gs.T @ gs, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.abs(gs), np.abs(qr), atol=1e-12)


def test_powersgd_warm_start_is_power_iteration():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((50, 20)))
    V, _ = np.linalg.qr(rng.standard_normal((30, 20)))
    M = U @ np.diag(0.7 ** np.arange(20)) @ V.T                 # decaying spectrum
    best = np.linalg.norm(M - U[:, :2] @ np.diag(0.7 ** np.arange(2)) @ V[:, :2].T)   # Eckart-Young
    errs = {}
    for warm in (True, False):
        comp = C.PowerSGD(rank=2, warm_start=warm)
        errs[warm] = [np.linalg.norm(comp.decompress(comp.compress(M, "w")) - M) for _ in range(30)]
    assert errs[True][-1] < 1.01 * best < errs[True][0]          # converges to the best rank 2
    assert min(errs[False]) > 1.05 * best                         # a fresh Q each step does not


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_powersgd_distributed_is_exact_on_a_rank_r_mean(p):
    rng = np.random.default_rng(p)
    U = rng.standard_normal((24, 2))
    Ms = [U @ rng.standard_normal((2, 9)) for _ in range(p)]       # the mean has rank 2
    bias = [rng.standard_normal(5) for _ in range(p)]

    def prog(comm):
        sync = CompressedDataParallel(C.PowerSGD(rank=2), error_feedback=False)
        grads = {"w": Ms[comm.rank].copy(), "b": bias[comm.rank].copy()}
        sync.exchange(comm, grads)
        return grads

    res = ms.launch(prog, p)
    for g in res:
        np.testing.assert_allclose(g["w"], np.mean(Ms, 0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(g["b"], np.mean(bias, 0), rtol=1e-12)
    # two ring all-reduces (P, then Q + bias), nothing else
    B = 8 * (24 * 2 + 9 * 2 + 5)
    assert res.trace.bytes_sent(label="all_reduce") == 2 * (p - 1) * B


# ---- error feedback ----------------------------------------------------------------------
COMPRESSORS = [lambda: C.TopK(ratio=0.05), lambda: C.RandomK(ratio=0.05), lambda: C.QSGD(levels=2),
               lambda: C.Sign(), lambda: C.PowerSGD(rank=1)]


@pytest.mark.parametrize("make", COMPRESSORS)
def test_error_feedback_loses_nothing(make):
    comp = C.ErrorFeedback(make())
    rng = np.random.default_rng(0)
    total, sent = np.zeros((12, 10)), np.zeros((12, 10))
    for _ in range(60):
        x = rng.standard_normal((12, 10))
        total += x
        before = comp.residuals.get("w", np.zeros_like(x)).copy()
        s = comp.decompress(comp.compress(x, "w"))
        sent += s
        r = comp.residuals["w"]
        if isinstance(comp.inner, (C.TopK, C.RandomK)):             # disjoint supports: exact
            np.testing.assert_array_equal(s + r, x + before)
        np.testing.assert_allclose(sent + r, total, rtol=0, atol=1e-12 * np.abs(total).max() * 60)
    assert comp.residual_norm() > 0


def test_fused_error_feedback_equals_the_generic_one():
    """TopK/Sign update the residual inside the ops kernel; the generic path (c = x + e,
    e = c - decompress) must give the same payloads and residuals."""
    for inner in (C.TopK(k=5), C.Sign()):
        fused = C.ErrorFeedback(inner)
        r = np.zeros(50, np.float32)
        rng = np.random.default_rng(1)
        for _ in range(10):
            x = rng.standard_normal(50).astype(np.float32)
            a = fused.decompress(fused.compress(x, "w"))
            c = x + r
            b = inner.decompress(inner.compress(c))
            r = c - b
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(fused.residuals["w"], r, rtol=1e-5, atol=1e-5)


def test_powersgd_uses_error_feedback_by_default():
    sync = CompressedDataParallel("powersgd", rank=1)
    assert isinstance(sync.compressor, C.ErrorFeedback) and isinstance(sync.compressor.inner, C.PowerSGD)
    comp = sync.compressor
    M = np.random.default_rng(0).standard_normal((8, 6))
    first = comp.decompress(comp.compress(M, "w"))
    assert np.linalg.norm(comp.residuals["w"]) > 0.5 * np.linalg.norm(M)
    # the residual is sent later: with zero new gradient something still goes out
    assert np.linalg.norm(comp.decompress(comp.compress(np.zeros_like(M), "w"))) > 0
    assert not np.allclose(first, 0)


def test_error_feedback_auto_and_qsgd_not_contractive():
    assert isinstance(C.make("sign", error_feedback="auto"), C.ErrorFeedback)
    assert isinstance(C.make("qsgd", levels=2, error_feedback="auto"), C.QSGD)
    assert isinstance(CompressedDataParallel("topk", ratio=0.1).compressor, C.ErrorFeedback)
    assert isinstance(CompressedDataParallel("qsgd").compressor, C.QSGD)
    with pytest.raises(ValueError, match="error_feedback"):
        C.make("topk", ratio=0.1, error_feedback="yes")
    # QSGD with s < sqrt(n) is not a contraction: fed back, its error grows every step,
    # while top-k's residual levels off
    rng = np.random.default_rng(0)
    grown = {}
    for name, comp in (("qsgd", C.ErrorFeedback(C.QSGD(levels=2))), ("topk", C.ErrorFeedback(C.TopK(ratio=0.01)))):
        for _ in range(30):
            comp.compress(rng.standard_normal(4096), "w")
        grown[name] = comp.residual_norm() / 64.0          # / ||g|| = sqrt(4096)
    assert grown["qsgd"] > 100 and grown["topk"] < 5


# ---- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (lambda: C.TopK(ratio=0), "ratio"), (lambda: C.TopK(ratio=1.5), "ratio"),
    (lambda: C.TopK(k=0), "k=0"), (lambda: C.TopK(), "exactly one"),
    (lambda: C.TopK(ratio=0.1, k=2), "exactly one"), (lambda: C.RandomK(k=-1), "k=-1"),
    (lambda: C.QSGD(levels=0), "levels"), (lambda: C.QSGD(levels=200), "levels"),
    (lambda: C.PowerSGD(rank=0), "rank"), (lambda: C.PowerSGD(orthogonalize="svd"), "orthogonalize"),
    (lambda: C.make("zip"), "unknown compressor"),
    (lambda: C.PowerSGD(rank=11).compress(np.zeros((64, 10)), "0.weight"), r"rank=11 > min\(64, 10\)"),
])
def test_bad_arguments_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_bad_types():
    with pytest.raises(TypeError, match="wraps a Compressor"):
        C.ErrorFeedback("topk")
    with pytest.raises(TypeError, match="already has error feedback"):
        C.ErrorFeedback(C.make("topk", ratio=0.1, error_feedback=True))
    with pytest.raises(TypeError, match="already built"):
        C.make(C.TopK(k=1), ratio=0.1)
    with pytest.raises(TypeError, match="name or a Compressor"):
        CompressedDataParallel(3)


def test_make_by_name():
    assert isinstance(C.make("top-k", ratio=0.1), C.TopK)
    assert isinstance(C.make("PowerSGD", rank=2, error_feedback=True).inner, C.PowerSGD)
    assert C.make("none").exchange == "all_reduce" and C.make("qsgd").exchange == "all_gather"
