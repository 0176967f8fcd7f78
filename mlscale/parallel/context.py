"""Long context: the sequence split over a ``cp`` group of ranks, attention still exact.

Two ways, both on q, k, v in :mod:`mlscale.nn.attention`'s layout (batch, heads, seq, head_dim),
each rank holding s/p of the tokens (``cp_shard``), forward and backward beside each other:

- **Ulysses** (DeepSpeed-Ulysses, Jacobs et al. 2023): an all-to-all turns q, k, v from
  sequence-sharded (b, h, s/p, dh) into head-sharded (b, h/p, s, dh); each rank runs full
  attention on its h/p heads (``attention_forward``, unchanged); an all-to-all turns the
  output back. Forward: 4 all-to-alls (q, k, v, out), backward 4 (dout; dq, dk, dv). With the
  pairwise all-to-all each moves, per rank, (p - 1)/p of its b h (s/p) dh itemsize bytes (its
  own piece stays home): ``ulysses_bytes``. Needs h % p == 0.
- **Ring attention** (Liu, Zaharia, Abbeel 2023, *Ring Attention with Blockwise
  Transformers*): q stays home, the K/V blocks go round the ring (p - 1 shifts, the ring's
  send/recv pattern, JAX's ppermute) and each block is folded into a running softmax, the
  online softmax of Milakov and Gimelshein 2018 / FlashAttention (Dao 2022):
  ``m' = max(m, rowmax S)``, ``l' = l e^(m - m') + rowsum e^(S - m')``,
  ``acc' = acc e^(m - m') + e^(S - m') V``, and at the end ``out = acc / l``,
  ``lse = m + log l``. Backward (FlashAttention-2, Dao 2023) sends K, V round again with the
  dK, dV accumulators behind them, recomputing ``P = exp(S - lse)`` block by block:
  ``dV += P^T dO``, ``dS = P (dO V^T - D)`` with ``D = rowsum(dO * O)``, ``dQ += dS K / sqrt(dh)``,
  ``dK += dS^T Q / sqrt(dh)``. No rank ever holds more than s/p tokens of anything: the cache
  is q, k, v, out (b, h, s/p, dh) and lse (b, h, s/p).

Causal masking makes a contiguous split unfair: rank r needs only the K/V of ranks 0..r, so
the last rank works p times as long as the first. The **zig-zag** split (zhuzilin/
ring-flash-attention; Megatron-LM's context parallelism; the Llama 3 report, Dubey et al. 2024;
Brandon et al. 2023's Striped Attention balances the same work with a round-robin split) cuts
the sequence into 2p chunks and gives rank r chunks r and 2p-1-r: every rank then computes the
same number of (query chunk, key chunk) pairs, 2p + 1 of them (``ring_blocks``). With ``overlap=True`` the next
K/V shift runs on the communication stream (``comm.start``) while this block computes
(``comm.compute(flops=...)`` on sim): a step costs max(compute, transfer), not their sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..nn._xp import array_module
from ..nn.attention import attention_backward, attention_forward, matmul

TAG_KV, TAG_DKV = 11, 12


# ---------------------------------------------------------------- the sequence over cp ranks
def check_context_parallel(seq, world_size, zigzag=True, where="context parallelism"):
    """Raise a ValueError naming the sizes unless ``seq`` splits into p (2p for zig-zag) chunks."""
    n = 2 * int(world_size) if zigzag else int(world_size)
    if int(seq) % n:
        split = f"2 x cp = {n} zig-zag chunks" if zigzag else f"cp = {n} ranks"
        raise ValueError(f"{where}: a sequence of {seq} tokens does not split into {split}; use seq_len "
                         f"divisible by {n} (e.g. {(int(seq) // n + 1) * n}), pad the sequence, or change cp")


def cp_chunks(world_size, rank, zigzag=True):
    """The chunks rank holds: ``(rank, 2p - 1 - rank)`` of 2p (zig-zag), ``(rank,)`` of p."""
    return (rank, 2 * world_size - 1 - rank) if zigzag else (rank,)


def cp_positions(seq, world_size, rank, zigzag=True):
    """The global token indices rank holds, in its local order."""
    check_context_parallel(seq, world_size, zigzag)
    c = seq // (2 * world_size if zigzag else world_size)
    return np.concatenate([np.arange(j * c, (j + 1) * c) for j in cp_chunks(world_size, rank, zigzag)])


def cp_shard(x, world_size, rank, zigzag=True, axis=-2):
    """Rank's tokens of the full array x (a copy), the sequence on ``axis`` (-2 of (b, h, s, dh))."""
    xp = array_module(x)
    idx = cp_positions(x.shape[axis], world_size, rank, zigzag)
    return xp.ascontiguousarray(xp.take(x, xp.asarray(idx), axis=axis))


def cp_unshard(pieces, zigzag=True, axis=-2):
    """The full array from every rank's piece (in rank order): the inverse of ``cp_shard``."""
    xp = array_module(pieces[0])
    p = len(pieces)
    idx = np.concatenate([cp_positions(a.shape[axis] * p, p, r, zigzag) for r, a in enumerate(pieces)])
    full = xp.concatenate(pieces, axis=axis)
    return xp.take(full, xp.asarray(np.argsort(idx)), axis=axis)


def _check_qkv(q, k, v, where):
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(f"{where}: q, k, v must have one shape (batch, heads, seq/p, head_dim), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def _agree_flags(comm, where, q, **flags):
    """Every rank must pass the same flags and dtype: a rank that disagrees (one causal, one
    not) would compute garbage silently, so name the ranks and what each passed. Agreed as
    the engine agrees a collective's arguments (no messages on the wire, nothing in the trace)."""
    if not getattr(comm, "check", True) or comm.world_size == 1:
        return
    mine = tuple(sorted(flags.items())) + (("dtype", str(q.dtype)),)
    every = comm._agree_step((where, None, None, None, None, None), mine)
    if any(e != every[0] for e in every[1:]):
        diffs = []
        for i, (name, _) in enumerate(mine):
            seen = {}
            for r, e in enumerate(every):
                seen.setdefault(f"{name}={e[i][1]}", []).append(r)
            if len(seen) > 1:
                diffs += [f"{k} on ranks {rs}" for k, rs in sorted(seen.items(), key=lambda kv: len(kv[1]))]
        raise ValueError(f"{where} on rank {comm.rank}: the ranks disagree: " + "; ".join(diffs)
                         + ". Pass the same arguments on every rank of the cp group.")


# ---------------------------------------------------------------- Ulysses
def _seq_to_heads(comm, x, algorithm):  # (b, h, s/p, dh) -> (b, h/p, s, dh)
    p, hp = comm.world_size, x.shape[1] // comm.world_size
    got = comm.all_to_all([x[:, j * hp:(j + 1) * hp] for j in range(p)], algorithm=algorithm)
    return comm.xp.concatenate(got, axis=2)  # rank i's tokens come i-th: the sequence in order


def _heads_to_seq(comm, y, algorithm):  # (b, h/p, s, dh) -> (b, h, s/p, dh)
    p, n = comm.world_size, y.shape[2] // comm.world_size
    got = comm.all_to_all([y[:, :, j * n:(j + 1) * n] for j in range(p)], algorithm=algorithm)
    return comm.xp.concatenate(got, axis=1)  # rank i's heads come i-th


def ulysses_attention(comm, q, k, v, causal=True, algorithm="pairwise", keep_probs=False):
    """DeepSpeed-Ulysses attention; q, k, v (b, h, s/p, dh): this rank's contiguous tokens
    (``cp_shard(x, p, rank, zigzag=False)``). Returns ``(out, cache)``, out (b, h, s/p, dh).

    4 all-to-alls (``algorithm``: "pairwise" moves each byte once, see ``ulysses_bytes``)."""
    _check_qkv(q, k, v, f"ulysses_attention on rank {comm.rank}")
    _agree_flags(comm, "ulysses_attention", q, causal=bool(causal))
    p, h = comm.world_size, q.shape[1]
    if h % p:
        raise ValueError(f"ulysses_attention on rank {comm.rank}: {h} heads cannot be split over cp={p} ranks "
                         f"(Ulysses gives each rank h/p whole heads); use num_heads divisible by {p}, a cp size "
                         f"dividing {h}, or ring_attention, which has no such limit")
    qh, kh, vh = (_seq_to_heads(comm, x, algorithm) for x in (q, k, v))  # (b, h/p, s, dh)
    y, att = attention_forward(qh, kh, vh, causal=causal, keep_probs=keep_probs)
    return _heads_to_seq(comm, y, algorithm), (att, algorithm)


def ulysses_attention_backward(comm, dout, cache):
    """``(dq, dk, dv)``, each (b, h, s/p, dh), from dout (b, h, s/p, dh): the forward reversed."""
    att, algorithm = cache
    dq, dk, dv = attention_backward(_seq_to_heads(comm, dout, algorithm), att)
    return tuple(_heads_to_seq(comm, g, algorithm) for g in (dq, dk, dv))


def ulysses_bytes(shape, itemsize, world_size):
    """Bytes one rank sends in one Ulysses forward (and again in its backward), pairwise
    all-to-all: 4 tensors x (p - 1)/p x b h (s/p) dh itemsize; ``shape`` the local (b, h, s/p, dh)."""
    return 4 * (world_size - 1) * int(np.prod(shape)) * itemsize // world_size


# ---------------------------------------------------------------- ring attention
def ring_blocks(world_size, rank, step, causal=True, zigzag=True):
    """The (query chunk, key chunk) pairs rank computes at ``step`` (K/V of rank (rank - step) % p):
    a list of ``(qi, kj, diagonal)``, qi and kj local chunk indices (0, or 0 and 1 for zig-zag).
    Causal: a pair whose keys all come after its queries is skipped; the diagonal pair is masked."""
    src = (rank - step) % world_size
    mine, theirs = cp_chunks(world_size, rank, zigzag), cp_chunks(world_size, src, zigzag)
    out = []
    for qi, qc in enumerate(mine):
        for kj, kc in enumerate(theirs):
            if not causal or kc < qc:
                out.append((qi, kj, False))
            elif kc == qc:
                out.append((qi, kj, True))
    return out


@dataclass
class RingCache:
    """What ring attention keeps for backward: O(s/p) per rank."""
    q: object
    k: object
    v: object
    out: object
    lse: object  # (b, h, s/p): m + log l, the log-sum-exp of each query's row
    causal: bool
    zigzag: bool
    overlap: bool
    pairs: list = field(default_factory=list)  # (step, q chunk, k chunk) global chunk ids computed

    @property
    def nbytes(self):
        return sum(int(a.nbytes) for a in (self.q, self.k, self.v, self.out, self.lse))


def _shift(comm, x, tag, what):
    """Send x to the right neighbour, receive the left one's (one ring step, ppermute)."""
    p, r = comm.world_size, comm.rank
    with comm.label(f"ring_attention {what}"):
        got = comm.sendrecv(x, (r + 1) % p, (r - 1) % p, tag=tag)
    if tuple(got.shape) != tuple(x.shape) or got.dtype != x.dtype:
        raise ValueError(f"ring_attention on rank {r}: rank {(r - 1) % p} sent a {what} block of shape "
                         f"{tuple(got.shape)} {got.dtype}, this rank holds {tuple(x.shape)} {x.dtype}: every cp rank "
                         "must hold the same number of tokens (cp_shard of one sequence), heads and head_dim")
    return got


class _Now:
    def __init__(self, value):
        self.value = value

    def wait(self):
        return self.value


def _go(comm, overlap, x, tag, what):
    """Start the shift on the communication stream (overlap) or do it now."""
    return comm.start(_shift, x, tag, what) if overlap else _Now(_shift(comm, x, tag, what))


def _scores(q, k, diag, scale):  # (b, h, c, c): Q K^T / sqrt(dh), masked above the diagonal
    s = matmul(q, k.swapaxes(-1, -2)) * scale
    if diag:
        xp = array_module(s)
        s = xp.where(xp.tril(xp.ones(s.shape[-2:], dtype=bool)), s, -xp.inf)
    return s


def ring_attention(comm, q, k, v, causal=True, zigzag=True, overlap=True):
    """Ring attention forward; q, k, v (b, h, s/p, dh): this rank's tokens
    (``cp_shard(x, p, rank, zigzag)``). Returns ``(out, cache)``, out (b, h, s/p, dh)."""
    _check_qkv(q, k, v, f"ring_attention on rank {comm.rank}")
    _agree_flags(comm, "ring_attention", q, causal=bool(causal), zigzag=bool(zigzag), overlap=bool(overlap))
    p, r, xp = comm.world_size, comm.rank, comm.xp
    b, h, n, dh = q.shape
    nc = 2 if zigzag else 1
    if n % nc:
        raise ValueError(f"ring_attention on rank {r}: {n} local tokens do not split into the 2 zig-zag chunks; "
                         f"shard a sequence divisible by 2 x cp = {2 * p} (cp_shard) or pass zigzag=False")
    c, scale = n // nc, 1.0 / math.sqrt(dh)
    m = xp.full((b, h, n), -xp.inf, dtype=q.dtype)
    l = xp.zeros((b, h, n), dtype=q.dtype)
    acc = xp.zeros_like(q)
    kv = xp.stack([k, v])  # (2, b, h, s/p, dh): one message per step
    cache = RingCache(q, k, v, None, None, causal, zigzag, overlap)
    for t in range(p):
        nxt = _go(comm, overlap, kv, TAG_KV, "kv") if t < p - 1 else None  # the next block, meanwhile
        blocks = ring_blocks(p, r, t, causal, zigzag)
        comm.compute(flops=4 * b * h * c * c * dh * len(blocks), label="ring_attention forward")
        for qi, kj, diag in blocks:
            qs, ks = slice(qi * c, (qi + 1) * c), slice(kj * c, (kj + 1) * c)
            s = _scores(q[:, :, qs], kv[0][:, :, ks], diag, scale)
            m_new = xp.maximum(m[..., qs], s.max(axis=-1))
            rescale = xp.exp(m[..., qs] - m_new)  # e^(m - m'): 0 on the first block (m = -inf)
            e = xp.exp(s - m_new[..., None])
            l[..., qs] = l[..., qs] * rescale + e.sum(axis=-1)
            acc[:, :, qs] = acc[:, :, qs] * rescale[..., None] + matmul(e, kv[1][:, :, ks])
            m[..., qs] = m_new
            cache.pairs.append((t, cp_chunks(p, r, zigzag)[qi], cp_chunks(p, (r - t) % p, zigzag)[kj]))
        if nxt is not None:
            kv = nxt.wait()
    cache.out = acc / l[..., None]
    cache.lse = m + xp.log(l)
    return cache.out, cache


def ring_attention_backward(comm, dout, cache):
    """``(dq, dk, dv)``, each (b, h, s/p, dh), from dout (b, h, s/p, dh) and the forward's cache."""
    q, k, v, out, lse = cache.q, cache.k, cache.v, cache.out, cache.lse
    if tuple(dout.shape) != tuple(out.shape):
        raise ValueError(f"ring_attention_backward on rank {comm.rank}: dout has shape {tuple(dout.shape)}, "
                         f"the forward's output {tuple(out.shape)}")
    p, r, xp = comm.world_size, comm.rank, comm.xp
    b, h, n, dh = q.shape
    c, scale = n // (2 if cache.zigzag else 1), 1.0 / math.sqrt(dh)
    dd = (dout * out).sum(axis=-1)  # D = rowsum(dO * O), (b, h, s/p)
    dq = xp.zeros_like(q)
    kv, acc_req = xp.stack([k, v]), None
    for t in range(p):
        nxt = _go(comm, cache.overlap, kv, TAG_KV, "kv") if t < p - 1 else None
        blocks = ring_blocks(p, r, t, cache.causal, cache.zigzag)
        comm.compute(flops=10 * b * h * c * c * dh * len(blocks), label="ring_attention backward")
        dkv = xp.zeros_like(kv)  # this step's dK, dV of the block of rank (r - t) % p
        for qi, kj, diag in blocks:
            qs, ks = slice(qi * c, (qi + 1) * c), slice(kj * c, (kj + 1) * c)
            kb, vb, do = kv[0][:, :, ks], kv[1][:, :, ks], dout[:, :, qs]
            pr = xp.exp(_scores(q[:, :, qs], kb, diag, scale) - lse[..., qs, None])  # P, recomputed
            dkv[1][:, :, ks] += matmul(pr.swapaxes(-1, -2), do)
            ds = pr * (matmul(do, vb.swapaxes(-1, -2)) - dd[..., qs, None]) * scale
            dq[:, :, qs] += matmul(ds, kb)
            dkv[0][:, :, ks] += matmul(ds.swapaxes(-1, -2), q[:, :, qs])
        if acc_req is not None:  # the accumulator of this block, from the left: it travels behind K, V
            dkv += acc_req.wait()
        if p > 1:
            acc_req = _go(comm, cache.overlap, dkv, TAG_DKV, "dkv")
        if nxt is not None:
            kv = nxt.wait()
    dkv = acc_req.wait() if acc_req is not None else dkv  # after p shifts my own block's dK, dV is home
    return dq, dkv[0], dkv[1]


def ring_bytes(shape, itemsize, world_size):
    """Bytes one rank sends in ring attention, ``{"forward", "backward"}``: K and V
    (2 b h (s/p) dh itemsize) p - 1 times forward; backward K, V p - 1 times and dK, dV p times."""
    blk, p = 2 * int(np.prod(shape)) * itemsize, world_size
    return {"forward": (p - 1) * blk, "backward": (2 * p - 1) * blk if p > 1 else 0}


def ring_forward_time(world_size, shape, itemsize, network, causal=True, zigzag=True, overlap=True):
    """Virtual seconds of one ring-attention forward on sim (every rank alike, as with zig-zag or
    causal=False): step t computes ``C_t`` = its pairs' FLOPs / network.flops while the next K/V
    shift takes ``T = alpha + 2 b h (s/p) dh itemsize beta``; overlapped: sum over t < p-1 of
    max(C_t, T), plus C_{p-1}; not: sum of C_t + (p - 1) T."""
    if causal and not zigzag and world_size > 1:
        raise ValueError("ring_forward_time: a causal contiguous split gives the ranks unequal work (rank r "
                         "computes r + 1 blocks), so no one formula times every rank; use zigzag=True or "
                         "causal=False, or measure it on sim (ring_times)")
    b, h, n, dh = shape
    c = n // (2 if zigzag else 1)
    cs = [4 * b * h * c * c * dh * len(ring_blocks(world_size, 0, t, causal, zigzag)) / network.flops
          for t in range(world_size)]
    tt = network.alpha + 2 * int(np.prod(shape)) * itemsize * network.beta
    if overlap:
        return sum(max(ct, tt) for ct in cs[:-1]) + cs[-1]
    return sum(cs) + (world_size - 1) * tt


__all__ = ["check_context_parallel", "cp_chunks", "cp_positions", "cp_shard", "cp_unshard",
           "ulysses_attention", "ulysses_attention_backward", "ulysses_bytes", "ring_blocks", "RingCache",
           "ring_attention", "ring_attention_backward", "ring_bytes", "ring_forward_time"]
