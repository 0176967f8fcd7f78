"""The notebook-08 checker accepts the reference and rejects typical wrong answers."""
import numpy as np

from mlscale.check import core
from mlscale.check.compress import solution_topk_error_feedback, topk_error_feedback


def test_accepts_the_reference():
    res = topk_error_feedback(solution_topk_error_feedback, verbose=False)
    assert res.passed and res.cases == 12


def test_accepts_the_library_kernel():
    from mlscale import ops
    assert topk_error_feedback(lambda g, r, k: ops.topk_compress(g, k, r), verbose=False).passed


def test_stub_is_not_implemented():
    def stub(grad, residual, k):
        raise NotImplementedError

    res = topk_error_feedback(stub, verbose=False)
    assert res.not_implemented and not res.passed and "not implemented yet" in res.summary()


def no_feedback(grad, residual, k):            # selects on |grad| and never keeps anything
    idx = np.argsort(-np.abs(grad))[:k]
    return idx, grad[idx]


def rebinds(grad, residual, k):                # residual = c: the caller's array never changes
    c = grad + residual
    idx = np.argsort(-np.abs(c))[:k]
    values = c[idx]
    c[idx] = 0
    residual = c  # noqa: F841
    return idx, values


def keeps_sent(grad, residual, k):             # forgets to zero the sent entries: counted twice
    c = grad + residual
    idx = np.argsort(-np.abs(c))[:k]
    residual[...] = c
    return idx, c[idx]


def smallest(grad, residual, k):
    c = grad + residual
    idx = np.argsort(np.abs(c))[:k]
    values = c[idx]
    c[idx] = 0
    residual[...] = c
    return idx, values


def too_many(grad, residual, k):
    idx, values = solution_topk_error_feedback(grad, residual, k)
    return np.append(idx, 0), np.append(values, 0)


def test_rejects_wrong_answers():
    for fn, says in ((no_feedback, "residual did not change"), (rebinds, "residual did not change"),
                     (keeps_sent, "residual differs"), (smallest, "wrong entries"),
                     (too_many, "return k=")):
        res = topk_error_feedback(fn, verbose=False)
        assert not res.passed, fn.__name__
        assert any(says in f for f in res.failures), (fn.__name__, res.failures[:2])


def test_hint_and_solution_are_registered(capsys):
    core.hint("topk_error_feedback")
    core.solution("topk_error_feedback")
    out = capsys.readouterr().out
    assert "grad + residual" in out and "def solution_topk_error_feedback" in out
