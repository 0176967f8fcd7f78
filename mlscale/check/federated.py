"""Checkers for the federated-learning exercises (notebook 07).

``fedavg(fn)``: the learner writes FedAvg's aggregation rule,

    def my_fedavg(results):          # results: [(list of arrays, num_examples), ...]
        ...                          # -> list of arrays: sum_k n_k x_k / sum_k n_k

checked against ``mlscale.federated.fedavg_reference`` on cases with one and several
clients, several arrays per client, unequal num_examples, a client with 0 examples,
float32 and float64; wrong answers get a diagnosis (unweighted mean, sum, the inputs
changed in place).

``pairwise_mask(fn)``: the learner writes SecAgg's masking step (Bonawitz et al. 2017),

    def my_mask(x_enc, u, seeds):    # x_enc uint64, seeds {v: s_uv}, from secure.prg(s_uv, n)
        ...                          # -> y_u = x_u + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)

checked by what the masks must do: every y_u differs from x_u, and the masked vectors
of all clients sum to the sum of the x_u (mod 2^64).
"""
from __future__ import annotations

import numpy as np

from .core import NOT_IMPLEMENTED, CheckResult, register, run_case

FEDAVG_HINT = """\
FedAvg weighs each client by how much data it trained on (McMahan et al. 2017):
  total = sum(n for _, n in results)
  out = [np.zeros_like(a) for a in results[0][0]]      # one array per tensor
  for arrays, n in results:
      for acc, a in zip(out, arrays):
          acc += (n / total) * a                          # weight n_k / n
Return a NEW list (do not change the clients' arrays), same shapes and dtypes.
A plain mean treats a client with 10 examples like one with 1000.
Still stuck? from mlscale.check import solution; solution("fedavg")"""

MASK_HINT = """\
Every pair (u, v) shares one mask PRG(s_uv). One of them must ADD it and the other
SUBTRACT it, so that it cancels in the sum; the rule is the ids' order:
  y = x_enc.copy()
  for v, s in seeds.items():
      r = prg(s, x_enc.size)            # uint64, uniform on [0, 2^64)
      if v > u: y += r                  # numpy's uint64 arithmetic wraps mod 2^64
      else:     y -= r
Stay in np.uint64 throughout: floats would lose the low bits.
Still stuck? from mlscale.check import solution; solution("pairwise_mask")"""


def solution_fedavg(results):
    """FedAvg: sum_k (n_k / n) x_k for every array (McMahan et al. 2017)."""
    total = sum(n for _, n in results)
    out = [np.zeros(a.shape, dtype=np.float64) for a in results[0][0]]
    for arrays, n in results:
        for acc, a in zip(out, arrays):
            acc += (n / total) * a
    return [acc.astype(a.dtype) for acc, a in zip(out, results[0][0])]


def solution_pairwise_mask(x_enc, u, seeds):
    """y_u = x_u + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod 2^64 (Bonawitz et al. 2017)."""
    from ..federated.secure import prg

    y = x_enc.copy()
    for v, s in seeds.items():
        r = prg(s, x_enc.size)
        if v > u:
            y += r
        else:
            y -= r
    return y


def _fedavg_cases():
    rng = np.random.default_rng(3)
    cases = []
    for name, counts, shapes, dtype in [
        ("1 client, 1 array", [7], [(5,)], np.float64),
        ("3 clients, 2 arrays, unequal n", [10, 30, 60], [(4, 3), (3,)], np.float64),
        ("4 clients, float32", [1, 2, 3, 94], [(6,), (2, 2)], np.float32),
        ("3 clients, one with 0 examples", [0, 5, 15], [(8,)], np.float64),
        ("5 clients, very unequal n", [1, 1000, 3, 3, 50], [(3, 2), (2,), (1,)], np.float64),
    ]:
        results = [([rng.standard_normal(s).astype(dtype) for s in shapes], n) for n in counts]
        cases.append((name, results))
    return cases


def _diagnose_fedavg(got, results, want):
    if not isinstance(got, (list, tuple)) or len(got) != len(want):
        return (f"return a list of {len(want)} arrays (one per tensor), got "
                f"{type(got).__name__}{'' if not hasattr(got, '__len__') else f' of length {len(got)}'}")
    for j, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        if g.shape != w.shape:
            return f"array {j} has shape {g.shape}, expected {w.shape}"
        tol = 1e-5 if w.dtype == np.float32 else 1e-10
        if np.allclose(g, w, rtol=tol, atol=tol):
            continue
        plain = np.mean([a[j].astype(np.float64) for a, _ in results], axis=0)
        total = np.sum([a[j].astype(np.float64) * n for a, n in results], axis=0)
        if np.allclose(g, plain, rtol=tol, atol=tol):
            return f"array {j} is the plain mean over clients: weigh client k by n_k / sum(n)"
        if np.allclose(g, total, rtol=tol, atol=tol):
            return f"array {j} is sum_k n_k x_k: divide by the total number of examples"
        if np.allclose(g, total / len(results), rtol=tol, atol=tol):
            return f"array {j}: you divided by the number of clients; divide by sum_k n_k"
        i = int(np.argmax(np.abs(g - w)))
        return f"array {j}, element {i}: got {g.ravel()[i]:.6g}, FedAvg gives {w.ravel()[i]:.6g}"
    return None


def fedavg(fn, verbose=True):
    """Check a learner's ``fn(results) -> list of arrays``, FedAvg's weighted mean."""
    from ..federated import fedavg_reference

    res = CheckResult("fedavg")
    for name, results in _fedavg_cases():
        res.cases += 1
        want = fedavg_reference(results)
        before = [[a.copy() for a in arrays] for arrays, _ in results]
        failed_before = len(res.failures)
        got = run_case(res, name, lambda: fn(results))
        if got is NOT_IMPLEMENTED:
            return res.done(verbose)
        if len(res.failures) > failed_before:  # it raised: already recorded
            continue
        if any(not np.array_equal(a, b) for (arrays, _), bs in zip(results, before) for a, b in zip(arrays, bs)):
            res.failures.append(f"{name}: your function changed the clients' arrays in place; build new ones")
            continue
        bad = _diagnose_fedavg(got, results, want)
        if bad:
            res.failures.append(f"{name}: {bad}")
    return res.done(verbose)


def pairwise_mask(fn, verbose=True):
    """Check a learner's ``fn(x_enc, u, seeds) -> y_u``: masks hide x_u and cancel in the sum."""
    from ..federated import secure

    res = CheckResult("pairwise_mask")
    for num_clients, n in [(2, 5), (3, 1), (4, 17), (7, 64)]:
        res.cases += 1
        case = f"{num_clients} clients, {n} values"
        ids = list(range(1, num_clients + 1))
        rng = np.random.default_rng(num_clients * 31 + n)
        xs = {u: secure.FixedPoint().encode(rng.standard_normal(n), num_clients) for u in ids}
        seeds = {u: {} for u in ids}
        for a in ids:
            for b in ids:
                if a < b:
                    seeds[a][b] = seeds[b][a] = int(rng.integers(2**62))
        ys = {}
        for u in ids:
            failed_before = len(res.failures)
            y = run_case(res, case, lambda u=u: fn(xs[u].copy(), u, dict(seeds[u])))
            if y is NOT_IMPLEMENTED:
                return res.done(verbose)
            if len(res.failures) > failed_before:
                break
            if y is None:
                res.failures.append(f"{case}: your function returned None; return y_u")
                break
            ys[u] = y
        if len(ys) < len(ids):
            continue
        y1 = np.asarray(ys[1])
        if y1.dtype != np.uint64 or y1.shape != (n,):
            res.failures.append(f"{case}: y_u must be a uint64 array of shape ({n},), got {y1.dtype} {y1.shape}: "
                                "stay in integers mod 2^64")
            continue
        unmasked = [u for u in ids if np.array_equal(ys[u], xs[u])]
        one_sided = _one_sided_masks(ys, xs, seeds, ids) if unmasked else ""
        if one_sided:
            res.failures.append(f"{case}: {one_sided}")
            continue
        if unmasked and num_clients > 1:
            res.failures.append(f"{case}: y_u equals x_u for client(s) {unmasked}: no mask was added "
                                "(add PRG(s_uv) for every peer v > u, subtract it for v < u)")
            continue
        total = secure.sum_mod([np.asarray(y, dtype=np.uint64) for y in ys.values()])
        if not np.array_equal(total, secure.sum_mod(xs.values())):
            res.failures.append(f"{case}: {_why_masks_do_not_cancel(ys, xs, seeds, ids)}")
    return res.done(verbose)


def _one_sided_masks(ys, xs, seeds, ids):
    """The mistake that leaves the first or last client unmasked: only the v > u terms added
    (nothing subtracted), or only the v < u terms subtracted (nothing added)."""
    from ..federated.secure import prg

    def only(side):
        for u in ids:
            n = xs[u].size
            got = (np.asarray(ys[u], dtype=np.uint64) - xs[u]).astype(np.uint64)
            m = np.zeros(n, np.uint64)
            for v, s in seeds[u].items():
                if side == "add" and v > u:
                    m = m + prg(s, n)
                elif side == "sub" and v < u:
                    m = m - prg(s, n)
            if not np.array_equal(got, m):
                return False
        return True

    if only("add"):
        return (f"every client only added PRG(s_uv) for v > u and never subtracted it for v < u: client "
                f"{ids[-1]} is left unmasked and nothing cancels. Subtract PRG(s_uv) for every peer v < u")
    if only("sub"):
        return (f"every client only subtracted PRG(s_uv) for v < u and never added it for v > u: client "
                f"{ids[0]} is left unmasked and nothing cancels. Add PRG(s_uv) for every peer v > u")
    return ""


def _why_masks_do_not_cancel(ys, xs, seeds, ids):
    """Name what went wrong when the masked vectors do not sum to sum_u x_u: compare each
    client's mask y_u - x_u with the right one and with the usual mistakes."""
    from ..federated.secure import prg

    for u in ids:
        n = xs[u].size
        got = (np.asarray(ys[u], dtype=np.uint64) - xs[u]).astype(np.uint64)
        masks = {v: prg(s, n) for v, s in seeds[u].items()}
        right = np.zeros(n, np.uint64)
        for v, r in masks.items():
            right = right + r if v > u else right - r
        if np.array_equal(got, right):
            continue
        flipped = np.zeros(n, np.uint64)
        for v, r in masks.items():
            flipped = flipped - r if v > u else flipped + r
        all_added = np.zeros(n, np.uint64)
        for r in masks.values():
            all_added = all_added + r
        if np.array_equal(got, all_added):
            return (f"client {u} added every pair's mask: then nothing cancels. Add PRG(s_uv) for "
                    "v > u and SUBTRACT it for v < u")
        if np.array_equal(got, flipped):
            return (f"client {u} has the signs the wrong way round (that cancels only if every client "
                    "flips: keep the rule, add for v > u, subtract for v < u)")
        every_seed = {sd for peers in seeds.values() for sd in peers.values()}
        suspects = []  # one term wrong: another pair's seed used for peer v?
        for v, sd in seeds[u].items():
            rest = right - masks[v] if v > u else right + masks[v]
            term = (got - rest).astype(np.uint64) if v > u else (rest - got).astype(np.uint64)
            if any(np.array_equal(term, prg(other, n)) for other in every_seed - {sd}):
                suspects.append(v)
        if suspects:
            return (f"client {u}: a mask was made from another pair's seed (the term for peer "
                    f"{' or '.join(map(str, sorted(suspects)))}); each term uses the seed the two share: "
                    "prg(seeds[v], x_enc.size)")
        return (f"client {u}'s mask y_u - x_u is not sum_(v>u) PRG(s_uv) - sum_(v<u) PRG(s_uv): each "
                f"term must come from the seed client {u} shares with peer v (seeds[v]), added for v > u "
                "and subtracted for v < u")
    return ("the masked vectors do not sum to sum_u x_u: each pair's mask must be added by one client "
            "(v > u) and subtracted by the other (v < u)")


register("fedavg", FEDAVG_HINT, solution_fedavg)
register("pairwise_mask", MASK_HINT, solution_pairwise_mask)
