"""Shamir secret sharing over a prime field (Shamir 1979), for SecAgg's dropout recovery.

A secret s < P is hidden as the constant term of a random polynomial of degree t - 1,
f(z) = s + a_1 z + ... + a_{t-1} z^{t-1} mod P; share i is (i, f(i)). Any t shares give
s back by Lagrange interpolation at z = 0; t - 1 shares say nothing about s (every s
fits them equally well). P is the Mersenne prime 2^521 - 1, larger than any secret here
(256-bit Diffie-Hellman exponents, Bonawitz et al. 2017, Section 4).
"""
from __future__ import annotations

import secrets as _secrets

PRIME = 2**521 - 1


def _rand_below(rng, n):
    if rng is None:
        return _secrets.randbelow(n)
    return rng.randrange(n)  # a random.Random (seeded: reproducible course runs)


def share(secret, ids, t, rng=None):
    """Shares ``{i: f(i)}`` of ``secret`` for the nonzero integer ids, threshold t.

    rng: a ``random.Random`` for reproducible shares, None for the OS's randomness.
    """
    secret = int(secret)
    ids = [int(i) for i in ids]
    if not 0 <= secret < PRIME:
        raise ValueError(f"shamir.share: the secret must be in [0, 2^521 - 1), got {secret.bit_length()} bits")
    if len(set(ids)) != len(ids) or any(not 0 < i < PRIME for i in ids):
        raise ValueError(f"shamir.share: ids must be distinct nonzero integers, got {ids}")
    if isinstance(t, bool) or int(t) != t or not 1 <= t <= len(ids):
        raise ValueError(f"shamir.share: threshold t={t!r} must be in [1, {len(ids)}] (the number of shares)")
    coeffs = [secret] + [_rand_below(rng, PRIME) for _ in range(int(t) - 1)]
    out = {}
    for i in ids:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * i + c) % PRIME
        out[i] = acc
    return out


def reconstruct(shares, t=None):
    """The secret from ``{i: f(i)}`` (Lagrange at 0). With t given, fewer shares is an error."""
    items = [(int(i), int(v)) for i, v in dict(shares).items()]
    if not items:
        raise ValueError("shamir.reconstruct: no shares")
    if t is not None and len(items) < t:
        raise ValueError(f"shamir.reconstruct: {len(items)} shares, the threshold is t={t}: "
                         "fewer than t shares reveal nothing, so the secret cannot be recovered")
    secret = 0
    for j, (xj, yj) in enumerate(items):
        num, den = 1, 1
        for m, (xm, _) in enumerate(items):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret
