"""SecAgg's rounds over a Communicator: rank 0 the server, the sampled clients' ranks.

The same steps as ``secure.secure_sum``, with every key, share and masked vector sent
as bytes through ``comm`` (so the trace shows what secure aggregation costs):

    client -> server   pk_u (256 B)                                AdvertiseKeys
    server -> client   every sampled pk (m x 256 B)
    client -> server   m - 1 sealed Shamir shares of sk_u (66 B each)   ShareKeys
    server -> client   the m - 1 sealed shares addressed to it
    client -> server   y_u (d x 8 B), unless it dropped             MaskedInputCollection
    server -> client   the ids that dropped; client -> server: its shares of their sk   Unmasking

A dropped client is modelled as one that stops after ShareKeys; the server learns who
dropped from the round's seeded schedule (a real server: from a timeout).
"""
from __future__ import annotations

import random

import numpy as np

from . import secure, shamir

TAG_PK, TAG_PKS, TAG_SHARES, TAG_INBOX, TAG_Y, TAG_DROPPED, TAG_REVEAL = range(20, 27)
SHARE_BYTES = (shamir.PRIME.bit_length() + 7) // 8


def to_bytes(values, nbytes):
    """Python ints -> a (len, nbytes) uint8 array (big-endian)."""
    return np.frombuffer(b"".join(int(v).to_bytes(nbytes, "big") for v in values), dtype=np.uint8
                         ).reshape(len(values), nbytes).copy()


def from_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    if arr.size == 0:
        return []
    arr = arr.reshape(len(arr), -1)
    return [int.from_bytes(row.tobytes(), "big") for row in arr]


def key_rng(seed, round, client):
    return random.Random(f"secagg/{seed}/{round}/{client}")


def client_round(comm, cid, peers, vec, dropped, fp, t, seed, round):
    """Client ``cid`` (rank cid + 1) in one SecAgg round. vec: float64 vector to sum;
    peers: every sampled client id (itself included); dropped: the ids that vanish."""
    rng = key_rng(seed, round, cid)
    sk, pk = secure.keygen(rng)
    ids = [int(p) + 1 for p in peers]  # Shamir x-coordinates must be > 0
    me = cid + 1
    comm.send(to_bytes([pk], secure.KEY_BYTES), 0, tag=TAG_PK)
    pks = dict(zip(ids, from_bytes(comm.recv(0, tag=TAG_PKS))))
    seeds = {v: secure.agree(sk, pks[v]) for v in ids if v != me}
    shares = shamir.share(sk, ids, t, rng)
    others = [v for v in ids if v != me]
    comm.send(to_bytes([secure.encrypt_share(seeds[v], shares[v]) for v in others], SHARE_BYTES), 0,
              tag=TAG_SHARES)
    inbox = dict(zip(others, from_bytes(comm.recv(0, tag=TAG_INBOX))))  # sealed, from each u
    if cid in dropped:
        return
    y = secure.mask(fp.encode(vec, len(ids)), me, seeds, fp.bits)
    comm.send(y, 0, tag=TAG_Y)
    gone = [int(u) for u in comm.recv(0, tag=TAG_DROPPED)]
    if gone:  # Unmasking: my shares of the dropped clients' secret keys
        reveal = [secure.decrypt_share(seeds[u], inbox[u]) for u in gone]
        comm.send(to_bytes(reveal, SHARE_BYTES), 0, tag=TAG_REVEAL)


def server_round(comm, peers, dropped, fp, t):
    """The server's side: relay keys and shares, sum the masked vectors, unmask.
    Returns the decoded float64 sum over the surviving clients."""
    ids = [int(p) + 1 for p in peers]
    drop_ids = sorted(int(u) + 1 for u in dropped)
    survivors = [v for v in ids if v not in drop_ids]
    if len(survivors) < t:
        raise ValueError(f"secure aggregation: {len(survivors)} of {len(ids)} clients survived, the Shamir "
                         f"threshold is t={t}: the dropped clients' keys cannot be rebuilt; lower dropout")
    pk_rows = [comm.recv(v, tag=TAG_PK) for v in ids]  # rank v = id v
    pks = dict(zip(ids, from_bytes(np.concatenate(pk_rows))))
    table = np.concatenate(pk_rows)
    for v in ids:
        comm.send(table, v, tag=TAG_PKS)
    sealed = {}
    for u in ids:  # u's row j is the share for the j-th other client
        others = [v for v in ids if v != u]
        for v, row in zip(others, comm.recv(u, tag=TAG_SHARES)):
            sealed[u, v] = row
    for v in ids:
        comm.send(np.stack([sealed[u, v] for u in ids if u != v]), v, tag=TAG_INBOX)
    total = secure.sum_mod([comm.recv(v, tag=TAG_Y) for v in survivors], fp.bits)
    for v in survivors:
        comm.send(np.asarray(drop_ids, dtype=np.int64), v, tag=TAG_DROPPED)
    revealed = {u: {} for u in drop_ids}
    for v in survivors if drop_ids else []:
        for u, s in zip(drop_ids, from_bytes(comm.recv(v, tag=TAG_REVEAL))):
            revealed[u][v] = s
    sks = {u: shamir.reconstruct(revealed[u], t) for u in drop_ids}
    total = secure.remove_dropped_masks(total, sks, {v: pks[v] for v in survivors}, fp.bits)
    return fp.decode(total)
