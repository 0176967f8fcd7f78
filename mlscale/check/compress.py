"""Checker for the compression exercise (notebook 08): top-k with error feedback.

The learner writes

    def topk_error_feedback(grad, residual, k):
        ...   # returns (indices, values); residual updated IN PLACE

which adds the residual to the gradient, sends the k entries of largest magnitude, and
keeps everything else in the residual for the next step (Stich et al. 2018; Lin et al.
2018). :func:`topk_error_feedback` runs it for several steps on awkward sizes and
compares with mlscale.ops.topk_compress_reference, the specification, and checks error
feedback's invariant: sum of what was sent + residual = sum of the gradients.
"""
from __future__ import annotations

import numpy as np

from .core import CheckResult, register, try_case

TOPK_HINT = """\
Three lines of NumPy, and one trap:
  c = grad + residual                        # add back what was not sent before
  idx = np.argsort(-np.abs(c))[:k]           # the k largest |c_i| (np.argpartition is faster)
  values = c[idx]
  c[idx] = 0                                 # what is sent leaves the residual...
  residual[...] = c                          # ...and the rest stays: IN PLACE (residual = c
                                             #    only rebinds your local name)
  return idx, values
Select on |grad + residual|, not on |grad|: otherwise small coordinates are never sent.
Still stuck? from mlscale.check import solution; solution("topk_error_feedback")"""

CASES = [(1, 1), (10, 1), (10, 3), (10, 10), (257, 5), (1000, 10)]
STEPS = 6


def solution_topk_error_feedback(grad, residual, k):
    """Reference solution: top-k of grad + residual, the rest kept in the residual."""
    c = grad + residual
    idx = np.argsort(-np.abs(c), kind="stable")[:k]
    values = c[idx].copy()
    c[idx] = 0
    residual[...] = c
    return idx, values


def topk_error_feedback(fn, verbose=True):
    """Check ``fn(grad, residual, k) -> (indices, values)`` (residual updated in place).

    For n elements and k kept (1 of 1, 1/3/10 of 10, 5 of 257, 10 of 1000), in float32
    and float64, over 6 steps with fresh gradients and one residual: the dense vector
    sent must equal the reference's, the residual must equal the reference's after
    every step, and sum(sent) + residual must equal sum(grads).
    """
    res = CheckResult("topk_error_feedback")
    for n, k in CASES:
        for dtype in (np.float32, np.float64):
            case = f"n={n}, k={k}, {np.dtype(dtype).name}"
            if not try_case(res, case, lambda: _steps(fn, n, k, dtype), lambda bad: bad):
                return res.done(verbose)
    return res.done(verbose)


def _steps(fn, n, k, dtype):
    rng = np.random.default_rng(1000 * n + k)
    mine, ref = np.zeros(n, dtype), np.zeros(n, dtype)
    total, sent_sum = np.zeros(n, np.float64), np.zeros(n, np.float64)
    for t in range(STEPS):
        grad = rng.standard_normal(n).astype(dtype)
        total += grad
        before = mine.copy()
        got = fn(grad.copy(), mine, k)
        if not isinstance(got, tuple) or len(got) != 2:
            return f"step {t}: return (indices, values), got {type(got).__name__}"
        idx, values = (np.asarray(a) for a in got)
        if idx.shape != (k,) or values.shape != (k,):
            return (f"step {t}: return k={k} indices and k values, got shapes {idx.shape} and "
                    f"{values.shape}")
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n or len(set(idx.tolist())) < k:
            return f"step {t}: indices must be k distinct ints in [0, {n}), got {idx.tolist()[:10]}"
        sent = np.zeros(n, np.float64)
        sent[idx] = values
        c_ref = grad.astype(np.float64) + ref       # what should be selected from, before the step
        want_idx, want_values = _reference(grad, k, ref)
        want = np.zeros(n, np.float64)
        want[want_idx] = want_values
        if np.array_equal(mine, before) and not np.array_equal(ref, before):
            return f"step {t}: the residual did not change: update it in place (residual[...] = ...)"
        if not np.allclose(sent, want, rtol=1e-6, atol=1e-6):
            wrong = sorted(set(idx.tolist()) ^ set(want_idx.tolist()))
            return (f"step {t}: sent the wrong entries (e.g. index {wrong[:3]}){_why_entries(idx, grad, c_ref, k)}"
                    if wrong else
                    f"step {t}: right indices, wrong values: send (grad + residual)[indices]")
        if not np.allclose(mine, ref, rtol=1e-6, atol=1e-6):
            if np.allclose(mine, c_ref, rtol=1e-6, atol=1e-6):
                return (f"step {t}: residual differs: the sent entries are still in the residual (it holds all "
                        "of grad + residual): after sending them, set them to 0 (residual[indices] = 0), or they "
                        "are sent twice")
            return (f"step {t}: residual differs from grad + residual with the sent entries set "
                    f"to 0 (largest gap {np.abs(mine - ref).max():.3g})")
        sent_sum += sent
        if not np.allclose(sent_sum + mine, total, rtol=1e-5, atol=1e-5):
            return f"step {t}: sum(sent) + residual != sum(grads): something was lost or counted twice"
    return ""


def _why_entries(idx, grad, c, k):
    """Name the usual wrong selection: on |grad| alone, or on the values without abs."""
    chosen = set(np.asarray(idx).tolist())
    top = lambda v: set(np.argsort(-v, kind="stable")[:k].tolist())  # noqa: E731
    if chosen == top(np.abs(grad.astype(np.float64))):
        return (": you selected on |grad|; select on |grad + residual|, or what the residual holds "
                "is never sent")
    if chosen == top(c):
        return (": you took the k largest values; top-k takes the largest magnitudes, "
                "np.abs(grad + residual): large negative entries count too")
    return ""


register("topk_error_feedback", TOPK_HINT, solution_topk_error_feedback)


def _reference(grad, k, residual):
    from ..ops import topk_compress_reference  # numba loads on first check, not on import

    return topk_compress_reference(grad, k, residual)
