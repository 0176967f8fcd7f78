"""Checker for notebook 13's long-context exercise: the online-softmax merge of two blocks.

    def merge(m1, l1, o1, m2, l2, o2):   # -> (m, l, o)
        ...

Queries attend to keys cut into two blocks. For block i and each query row: ``m_i`` is the
largest logit of the row in that block, ``l_i = sum_j exp(s_ij - m_i)`` its softmax denominator
taken from that max, and ``o_i`` the row's attention output over that block alone,
**normalised**: ``o_i = sum_j exp(s_ij - m_i) v_j / l_i``. The merge returns the same three for
both blocks together: ``m = max(m1, m2)``, ``l = l1 e^(m1 - m) + l2 e^(m2 - m)``,
``o = (l1 e^(m1 - m) o1 + l2 e^(m2 - m) o2) / l`` (Milakov and Gimelshein 2018; the recurrence of
FlashAttention and ring attention, ``mlscale.parallel.ring_attention``). m, l: (..., rows);
o: (..., rows, head_dim).

Judged against softmax over all the keys computed at once (float64, 1e-12): o must be that
attention output, and ``m + log l`` the log-sum-exp of each row (so any m with a matching l
passes). Cases: one row; many rows where either block holds the max; batched heads; a block
that the causal mask empties on some rows (m = -inf, l = 0, o = 0); logits around 1000
(exp overflows above 709); and three blocks merged two at a time.
"""
from __future__ import annotations

import numpy as np

from .core import CheckResult, register, try_case

HINT = """\
Bring both blocks to one reference point, the larger max m = max(m1, m2). A sum taken from
m_i becomes one taken from m when multiplied by exp(m_i - m) <= 1 (never overflows):
    m = np.maximum(m1, m2)
    w1 = l1 * np.exp(m1 - m)               # block 1's denominator, rescaled to m
    w2 = l2 * np.exp(m2 - m)
    l = w1 + w2
    o = (w1[..., None] * o1 + w2[..., None] * o2) / l[..., None]   # o_i are normalised: weight them
    return m, l, o
Still stuck? from mlscale.check import solution; solution("online_softmax_merge")"""


def online_softmax_merge_solution(m1, l1, o1, m2, l2, o2):
    """Merge two partial softmax-attention results (normalised outputs o1, o2)."""
    m = np.maximum(m1, m2)
    w1 = l1 * np.exp(m1 - m)
    w2 = l2 * np.exp(m2 - m)
    l = w1 + w2
    o = (w1[..., None] * o1 + w2[..., None] * o2) / l[..., None]
    return m, l, o


def partial(s, v):
    """(m, l, o) of one key block: logits s (..., rows, keys), values v (keys, head_dim);
    a row with every logit -inf (masked) gets m = -inf, l = 0, o = 0."""
    m = s.max(axis=-1)
    with np.errstate(invalid="ignore"):
        e = np.where(np.isfinite(m)[..., None], np.exp(s - np.where(np.isfinite(m), m, 0)[..., None]), 0.0)
    l = e.sum(axis=-1)
    o = np.divide(e @ v, l[..., None], out=np.zeros(s.shape[:-1] + v.shape[-1:]), where=l[..., None] > 0)
    return m, l, o


def _case(seed, lead, n1, n2, dh=4, shift=0.0, mask_rows=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(scale=3.0, size=lead + (n1 + n2,)) + shift
    if mask_rows:
        s[..., :mask_rows, n1:] = -np.inf  # block 2 masked on the first rows
    v = rng.normal(size=(n1 + n2, dh))
    return s, v, n1


def _close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-12)


def _judge(got, s, v, splits):
    """What is wrong with ``got = (m, l, o)`` merged over blocks ``splits`` of s, or None."""
    parts = [partial(s[..., a:b], v[a:b]) for a, b in zip(splits[:-1], splits[1:])]
    want = partial(s, v)
    lse_want = want[0] + np.log(want[1])
    huge = np.nanmax(s[np.isfinite(s)]) > 700
    if not (isinstance(got, tuple) and len(got) == 3):
        return f"return the tuple (m, l, o), got {type(got).__name__}"
    m, l, o = (np.asarray(x, dtype=float) for x in got)
    if o.shape != want[2].shape or l.shape != want[1].shape:
        return (f"o has shape {o.shape}, l {l.shape}: expected o {want[2].shape} and l, m {want[1].shape}; "
                "m and l have one value per row, o one vector per row: broadcast with l[..., None]")
    if not (np.isfinite(o).all() and np.isfinite(l).all() and not np.isnan(m).any()):
        if huge:
            return ("overflow: nan or inf with logits around 1000, as exp(x) overflows above x = 709 in "
                    "float64. Do not exponentiate m1, m2 themselves: subtract the max first, "
                    "exp(m_i - m) with m = max(m1, m2)")
        return "nan or inf in the result (a row with m2 = -inf and l2 = 0 is an empty block: it must weigh 0)"
    (m1, l1, o1), (m2, l2, o2) = parts[0], parts[-1]
    mm = np.maximum(m1, m2)
    w1, w2 = l1 * np.exp(m1 - mm), l2 * np.exp(m2 - mm)
    if not _close(o, want[2]):
        if len(parts) == 2:
            if _close(o, o1 + o2) or _close(o, (o1 + o2) / 2):
                return ("o is the plain sum (or mean) of o1 and o2: the outputs are normalised, so each must be "
                        "weighted by its block's share of the softmax, w_i = l_i exp(m_i - m), and divided by l")
            if _close(o, (l1[..., None] * o1 + l2[..., None] * o2) / (l1 + l2)[..., None]):
                return ("o weights the blocks by l1 and l2 alone: you forgot to rescale by exp(m_i - m). l1 is "
                        "a sum taken from m1, l2 from m2; bring both to m = max(m1, m2) first")
            if _close(o, w1[..., None] * o1 + w2[..., None] * o2):
                return "o is not normalised: o1 and o2 are, so divide the weighted sum by l = w1 + w2"
            e1, e2 = np.exp(m1 - mm), np.exp(m2 - mm)
            with np.errstate(invalid="ignore"):
                if _close(o, (e1[..., None] * o1 + e2[..., None] * o2) / (e1 + e2)[..., None]):
                    return ("o weights the blocks by exp(m_i - m) alone: the weight of block i is "
                            "l_i exp(m_i - m), its whole softmax denominator seen from m")
        i = np.unravel_index(np.argmax(np.abs(o - want[2])), o.shape)
        return f"o is wrong at index {tuple(int(j) for j in i)}: expected {want[2][i]:.6g}, got {o[i]:.6g}"
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = m + np.log(l)
    if not _close(lse, lse_want):
        if len(parts) == 2 and _close(l, l1 + l2) and _close(m, mm):
            return ("o is right, but l = l1 + l2: with m = max(m1, m2) you must rescale l too, "
                    "l = l1 exp(m1 - m) + l2 exp(m2 - m) (a later merge reads m and l)")
        return ("m + log(l) is not the log-sum-exp of the row's logits: l must be the softmax denominator "
                "seen from m, l = sum_j exp(s_j - m)")
    return None


CASES = [
    ("one row, 2 + 3 keys", (0, (1,), 2, 3), {}),
    ("8 rows, 5 + 7 keys (either block holds the max)", (1, (8,), 5, 7), {}),
    ("batched (2, 3 heads, 4 rows), 6 + 2 keys", (2, (2, 3, 4), 6, 2), {}),
    ("block 2 masked on 3 of 6 rows (m2 = -inf, l2 = 0, o2 = 0)", (3, (6,), 4, 4), {"mask_rows": 3}),
    ("logits around 1000 (exp overflows above 709)", (4, (5,), 3, 4), {"shift": 1000.0}),
]


def online_softmax_merge(fn, verbose=True):
    """Check ``fn(m1, l1, o1, m2, l2, o2) -> (m, l, o)`` against softmax over all keys at once."""
    res = CheckResult("online_softmax_merge")
    for case, (seed, lead, n1, n2), kw in CASES:
        s, v, cut = _case(seed, lead, n1, n2, **kw)

        def run(s=s, v=v, cut=cut):
            a, b = partial(s[..., :cut], v[:cut]), partial(s[..., cut:], v[cut:])
            with np.errstate(all="ignore"):
                return fn(*[x.copy() for x in a + b])

        if not try_case(res, case, run, lambda got, s=s, v=v, cut=cut: _judge(got, s, v, [0, cut, s.shape[-1]])):
            return res.done(verbose)
    s, v, _ = _case(5, (4,), 3, 3)  # three blocks, merged left to right: merge(merge(1, 2), 3)

    def three(s=s, v=v):
        a, b, c = (partial(s[..., i:i + 2], v[i:i + 2]) for i in (0, 2, 4))
        with np.errstate(all="ignore"):
            return fn(*fn(*[x.copy() for x in a + b]), *c)

    try_case(res, "three blocks of 2 keys, merged two at a time", three, lambda got: _judge(got, s, v, [0, 2, 4, 6]))
    return res.done(verbose)


merge = online_softmax_merge  # the name notebook 13 calls: check_os.merge(merge)

register("online_softmax_merge", HINT, online_softmax_merge_solution)

__all__ = ["online_softmax_merge", "merge", "online_softmax_merge_solution", "partial"]
