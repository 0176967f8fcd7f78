"""Secure aggregation (Bonawitz et al. 2017): fixed point, masks that cancel, Shamir recovery."""
import random

import numpy as np
import pytest

from mlscale import federated as fl
from mlscale.federated import secure, shamir


@pytest.mark.parametrize("bits,frac", [(64, 24), (32, 12)])
def test_fixed_point_roundtrip_and_range(bits, frac):
    fp = fl.FixedPoint(bits=bits, frac_bits=frac)
    x = np.array([0.0, 1.5, -1.5, 3.25, -0.001, 2.0 ** -frac])
    e = fp.encode(x, num_clients=4)
    assert e.dtype == fp.dtype
    np.testing.assert_allclose(fp.decode(e), x, atol=2.0 ** -(frac + 1))
    assert fp.decode(e)[3] == 3.25 and fp.decode(e)[2] == -1.5        # exact on the grid
    lim = fp.max_abs(4)
    with pytest.raises(ValueError, match="outside"):
        fp.encode(np.array([lim * 1.01]), num_clients=4)
    with pytest.raises(ValueError, match="outside"):
        fp.encode(np.array([np.nan]))
    # four values at the limit still sum without wrapping
    s = np.sum(np.stack([fp.encode(np.array([-lim * 0.999]), 4)] * 4), axis=0, dtype=fp.dtype)
    assert fp.decode(s)[0] == pytest.approx(-4 * lim * 0.999, rel=1e-6)
    with pytest.raises(ValueError, match="bits="):
        fl.FixedPoint(bits=16)


def test_dh_agreement_is_symmetric():
    rng = random.Random(0)
    (a, A), (b, B) = secure.keygen(rng), secure.keygen(rng)
    assert secure.agree(a, B) == secure.agree(b, A)
    (c, C) = secure.keygen(rng)
    assert secure.agree(a, C) != secure.agree(a, B)
    with pytest.raises(ValueError, match="small-subgroup"):
        secure.agree(a, 1)


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_masks_cancel_exactly(k, bits):
    rng = np.random.default_rng(k)
    fp = fl.FixedPoint(bits=bits, frac_bits=16 if bits == 32 else 24)
    n = 37
    ids = list(range(1, k + 1))
    seeds = {u: {} for u in ids}
    for u in ids:
        for v in ids:
            if u < v:
                seeds[u][v] = seeds[v][u] = int(rng.integers(2**62))
    xs = {u: rng.uniform(-3, 3, n) for u in ids}
    enc = {u: fp.encode(xs[u], k) for u in ids}
    ys = {u: secure.mask(enc[u], u, seeds[u], bits) for u in ids}
    assert all(not np.array_equal(ys[u], enc[u]) for u in ids)
    total = secure.sum_mod(ys.values(), bits)
    np.testing.assert_array_equal(total, secure.sum_mod(enc.values(), bits))   # bit for bit
    np.testing.assert_allclose(fp.decode(total), sum(xs.values()), atol=k * 2.0 ** -fp.frac_bits)


def test_masked_vector_looks_uniform():
    """y_u alone: uniform on [0, 2^64), uncorrelated with x_u (a ramp, a constant, a spike)."""
    n = 20_000
    fp = fl.FixedPoint()
    xs = {1: np.linspace(-5, 5, n), 2: np.full(n, 3.0), 3: np.where(np.arange(n) % 7 == 0, 4.0, -4.0)}
    out = fl.secure_sum(xs, seed=1)
    for u, x in xs.items():
        y = out.masked[u].astype(np.float64) / 2.0**64          # in [0, 1)
        assert abs(y.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
        assert abs(y.var() - 1 / 12) < 0.005
        counts = np.histogram(y, bins=20, range=(0, 1))[0]
        chi2 = ((counts - n / 20) ** 2 / (n / 20)).sum()
        assert chi2 < 45                                          # 19 dof: p < 0.001 above 43.8
        if x.std() > 0:
            assert abs(np.corrcoef(y, x)[0, 1]) < 5 / np.sqrt(n)
        enc = fp.encode(x, 3).astype(np.float64) / 2.0**64      # the unmasked encoding is NOT uniform
        assert abs(np.histogram(enc, bins=20, range=(0, 1))[0] - n / 20).max() > n / 20


def test_shamir():
    rng = random.Random(5)
    secret = rng.getrandbits(256)
    shares = shamir.share(secret, range(1, 8), t=4, rng=rng)
    for subset in ([1, 2, 3, 4], [7, 5, 3, 1], [2, 3, 4, 5, 6, 7]):
        assert shamir.reconstruct({i: shares[i] for i in subset}, t=4) == secret
    assert shamir.reconstruct({i: shares[i] for i in [1, 2, 3]}) != secret   # t - 1 shares: wrong
    with pytest.raises(ValueError, match="threshold is t=4"):
        shamir.reconstruct({i: shares[i] for i in [1, 2, 3]}, t=4)
    with pytest.raises(ValueError, match="threshold t=9"):
        shamir.share(secret, range(1, 8), t=9)
    with pytest.raises(ValueError, match="distinct nonzero"):
        shamir.share(secret, [0, 1, 2], t=2)


@pytest.mark.parametrize("k,dropped", [(2, []), (3, []), (5, [2]), (8, [1, 8, 4])])
def test_secure_sum_with_dropouts(k, dropped):
    rng = np.random.default_rng(k)
    xs = {u: rng.standard_normal(50) for u in range(1, k + 1)}
    out = fl.secure_sum(xs, dropped=dropped, seed=k)
    fp = fl.FixedPoint()
    want = secure.sum_mod([fp.encode(xs[u], k) for u in out.survivors])
    np.testing.assert_array_equal(out.total, fp.decode(want))                 # the exact fixed-point sum
    np.testing.assert_allclose(out.total, sum(xs[u] for u in out.survivors), atol=k * 2.0**-24)
    assert sorted(out.recovered) == sorted(dropped)
    # without the recovery the survivors' masks with the dropped would NOT cancel
    if dropped:
        raw = secure.sum_mod(out.masked.values())
        assert not np.array_equal(raw, want)


def test_secure_sum_errors():
    with pytest.raises(ValueError, match="at least 2"):
        fl.secure_sum({1: np.zeros(3)})
    with pytest.raises(ValueError, match="too many dropped"):
        fl.secure_sum({u: np.zeros(3) for u in range(1, 6)}, dropped=[1, 2, 3])   # t = 3, 2 survive
    with pytest.raises(ValueError, match="ids must be integers > 0"):
        fl.secure_sum({0: np.zeros(3), 1: np.zeros(3)})
    with pytest.raises(ValueError, match="are not clients"):
        fl.secure_sum({1: np.zeros(3), 2: np.zeros(3)}, dropped=[9])
