"""Secure aggregation, the pairwise-mask protocol of Bonawitz et al. 2017 (CCS),
"Practical Secure Aggregation for Privacy-Preserving Machine Learning".

The server learns sum_u x_u and nothing else about any one x_u:

1. fixed point: x_u (floats) -> integers mod R = 2^bits (``FixedPoint``);
2. AdvertiseKeys: client u draws a Diffie-Hellman key pair (sk_u, pk_u = g^sk_u mod p,
   RFC 3526 group 14, 2048 bits); the server relays every pk;
3. ShareKeys: u Shamir-shares sk_u (threshold t) among the others, each share
   encrypted with the pair's key, relayed by the server (which cannot read them);
4. MaskedInputCollection: with s_uv = H(pk_v^sk_u) = H(pk_u^sk_v) (both ends agree),
      y_u = x_u + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod R)
   each PRG(s_uv) is added by one end of the pair and subtracted by the other, so
   sum_u y_u = sum_u x_u (mod R) exactly; one y_u alone looks uniform on [0, R);
5. Unmasking: for a client u that dropped before sending y_u, the survivors' masks with
   u no longer cancel; the survivors send the server their shares of sk_u, the server
   reconstructs sk_u (>= t shares), recomputes every s_uv and removes those masks.

What is NOT done, on purpose: the self-mask b_u ("double masking", Section 4 of the
paper), which stops a server that lies about who dropped from unmasking a late y_u;
signatures against an active server; a cryptographic PRG (numpy's PCG64 stands in for
AES-CTR: fine to teach, not to deploy). ``secure_sum`` runs the whole protocol in one
process; ``mlscale.federated.server`` runs the same steps over a Communicator.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np

from . import shamir

# RFC 3526 group 14: a 2048-bit safe prime p = 2q + 1, generator 2
DH_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
DH_G = 2
KEY_BYTES = 256  # a public key on the wire


@dataclass(frozen=True)
class FixedPoint:
    """Reals <-> integers mod R = 2^bits: x -> round(x * 2^frac_bits) mod R (two's complement).

    The sum of ``num_clients`` encoded values decodes exactly (to 2^-frac_bits per
    value) while |sum| * 2^frac_bits < 2^(bits - 1): ``encode`` refuses values outside
    ``max_abs(num_clients)`` rather than let the sum wrap around silently.
    """

    bits: int = 64
    frac_bits: int = 24

    def __post_init__(self):
        if self.bits not in (32, 64):
            raise ValueError(f"FixedPoint: bits={self.bits!r}; use 32 (R = 2^32) or 64 (R = 2^64)")
        if not 0 <= self.frac_bits < self.bits - 2:
            raise ValueError(f"FixedPoint: frac_bits={self.frac_bits!r} must be in [0, {self.bits - 2})")

    @property
    def dtype(self):
        return np.dtype(np.uint64 if self.bits == 64 else np.uint32)

    @property
    def signed(self):
        return np.dtype(np.int64 if self.bits == 64 else np.int32)

    def max_abs(self, num_clients=1):
        """The largest |x| a coordinate may have so that num_clients of them cannot wrap."""
        return (2.0 ** (self.bits - 1) - 1) / (2.0 ** self.frac_bits * num_clients)

    def encode(self, x, num_clients=1):
        x = np.asarray(x, dtype=np.float64)
        bad = ~np.isfinite(x) | (np.abs(x) > self.max_abs(num_clients))
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(f"FixedPoint.encode: x[{i}] = {x.ravel()[i]!r} is outside "
                             f"+-{self.max_abs(num_clients):.4g}, the range where a sum of {num_clients} values "
                             f"fits {self.bits} bits with {self.frac_bits} fraction bits; clip the update, "
                             "or lower frac_bits")
        q = np.round(x * 2.0 ** self.frac_bits).astype(np.int64)
        return q.astype(self.signed).view(self.dtype)

    def decode(self, v):
        v = np.asarray(v)
        if v.dtype != self.dtype:
            raise TypeError(f"FixedPoint.decode: expected {self.dtype} (integers mod 2^{self.bits}), "
                            f"got {v.dtype}")
        return v.view(self.signed).astype(np.float64) / 2.0 ** self.frac_bits


# ---- key agreement and the PRG ---------------------------------------------------------
def keygen(rng=None):
    """(sk, pk): a 256-bit secret exponent and g^sk mod p. rng: random.Random or None (OS)."""
    sk = (rng.getrandbits(256) if rng is not None else random.SystemRandom().getrandbits(256)) | 1
    return sk, pow(DH_G, sk, DH_PRIME)


def agree(sk_u, pk_v):
    """The pair's seed s_uv = SHA-256(pk_v^sk_u mod p), the same at both ends (Diffie-Hellman)."""
    if not 1 < int(pk_v) < DH_PRIME - 1:
        raise ValueError("agree: the public key is not in (1, p - 1); refuse it (a small-subgroup key)")
    shared = pow(int(pk_v), int(sk_u), DH_PRIME)
    return int.from_bytes(hashlib.sha256(shared.to_bytes(KEY_BYTES, "big")).digest(), "big")


def prg(seed, n, bits=64, purpose="mask"):
    """n pseudo-random integers uniform on [0, 2^bits), from ``seed`` (PCG64 stands in for AES-CTR)."""
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "big")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), tag])))
    dtype = np.uint64 if bits == 64 else np.uint32
    return rng.integers(0, 2**bits, size=n, dtype=dtype, endpoint=False)


def pairwise_mask(u, n, seeds, bits=64):
    """sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) mod 2^bits; ``seeds`` is {v: s_uv}."""
    m = np.zeros(n, dtype=np.uint64 if bits == 64 else np.uint32)
    for v in sorted(seeds):
        if v == u:
            raise ValueError(f"pairwise_mask: client {u} has a seed with itself")
        if v > u:
            m += prg(seeds[v], n, bits)  # unsigned: wraps mod 2^bits, as intended
        else:
            m -= prg(seeds[v], n, bits)
    return m


def mask(x_enc, u, seeds, bits=64):
    """y_u = x_u + pairwise_mask(u) mod 2^bits (x_enc from ``FixedPoint.encode``)."""
    return x_enc + pairwise_mask(u, x_enc.size, seeds, bits).reshape(x_enc.shape)


def sum_mod(ys, bits=64):
    """sum_u y_u mod 2^bits: the server's one step of arithmetic."""
    return np.sum(np.stack(list(ys)), axis=0, dtype=np.uint64 if bits == 64 else np.uint32)


def encrypt_share(seed, value):
    """A Shamir share sealed for the pair (u, v): value + H(s_uv) mod P (a one-time pad)."""
    return (int(value) + prg_int(seed)) % shamir.PRIME


def decrypt_share(seed, sealed):
    return (int(sealed) - prg_int(seed)) % shamir.PRIME


def prg_int(seed):
    h = b"".join(hashlib.sha256(int(seed).to_bytes(32, "big") + bytes([i]) + b"share").digest()
                 for i in range(3))
    return int.from_bytes(h, "big") % shamir.PRIME


def remove_dropped_masks(total, dropped_sk, survivor_pks, bits=64):
    """Take the masks the survivors v shared with dropped clients u out of ``total``.

    Survivor v added +PRG(s_vu) if u > v and -PRG(s_vu) if u < v; with sk_u rebuilt from
    the Shamir shares the server computes s_vu = agree(sk_u, pk_v) and undoes each one.
    """
    total = total.copy()
    for u, sk_u in dropped_sk.items():
        for v, pk_v in survivor_pks.items():
            r = prg(agree(sk_u, pk_v), total.size, bits).reshape(total.shape)
            if u > v:
                total -= r
            else:
                total += r
    return total


# ---- the whole protocol in one process ------------------------------------------------
@dataclass
class SecureSum:
    """What ``secure_sum`` returns: the decoded sum and what the server saw."""

    total: np.ndarray  # decoded sum over the survivors, float64
    encoded: dict  # u -> FixedPoint encoding of x_u (never leaves the client)
    masked: dict  # u -> y_u, what the server received
    survivors: list
    dropped: list
    recovered: dict = field(default_factory=dict)  # u -> sk_u rebuilt from shares


def default_threshold(num_clients):
    """t = floor(n/2) + 1: a majority of the clients is needed to rebuild a secret key."""
    return num_clients // 2 + 1


def secure_sum(xs, dropped=(), t=None, fp=None, seed=0):
    """Run SecAgg in one process on ``xs`` = {client id (int > 0): float array}.

    dropped: ids that vanish after ShareKeys (before sending y_u); their x_u are left out
    and their masks removed by secret sharing. Returns a :class:`SecureSum`; its
    ``total`` equals the fixed-point sum of the survivors' x_u exactly.
    """
    fp = fp or FixedPoint()
    ids = sorted(int(u) for u in xs)
    if len(ids) < 2:
        raise ValueError(f"secure_sum: {len(ids)} client(s); the sum of one client IS its update, "
                         "so secure aggregation needs at least 2")
    if ids[0] <= 0:
        raise ValueError(f"secure_sum: client ids must be integers > 0 (Shamir evaluates at the id), got {ids}")
    dropped = sorted(set(int(u) for u in dropped))
    if set(dropped) - set(ids):
        raise ValueError(f"secure_sum: dropped {sorted(set(dropped) - set(ids))} are not clients {ids}")
    t = default_threshold(len(ids)) if t is None else int(t)
    survivors = [u for u in ids if u not in dropped]
    if len(survivors) < t:
        raise ValueError(f"secure_sum: {len(survivors)} survivors of {len(ids)} clients, the threshold is "
                         f"t={t}: too many dropped to rebuild their keys; the round must be abandoned")
    rng = random.Random(seed)
    keys = {u: keygen(rng) for u in ids}  # AdvertiseKeys
    pks = {u: keys[u][1] for u in ids}
    seeds = {u: {v: agree(keys[u][0], pks[v]) for v in ids if v != u} for u in ids}
    inbox = {v: {} for v in ids}  # ShareKeys: sealed shares, relayed by the server
    for u in ids:
        for v, s in shamir.share(keys[u][0], ids, t, rng).items():
            if v != u:
                inbox[v][u] = encrypt_share(seeds[u][v], s)
    n = len(ids)
    encoded = {u: fp.encode(xs[u], n) for u in ids}
    masked = {u: mask(encoded[u], u, seeds[u], fp.bits) for u in survivors}  # MaskedInputCollection
    total = sum_mod(masked.values(), fp.bits)
    recovered = {}
    for u in dropped:  # Unmasking: survivors reveal their shares of sk_u
        got = {v: decrypt_share(seeds[v][u], inbox[v][u]) for v in survivors}
        recovered[u] = shamir.reconstruct(got, t)
    total = remove_dropped_masks(total, recovered, {v: pks[v] for v in survivors}, fp.bits)
    return SecureSum(fp.decode(total), encoded, masked, survivors, dropped, recovered)
