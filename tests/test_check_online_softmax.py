"""The online-softmax merge exercise (notebook 13): right answers written differently pass,
the usual mistakes fail with a verdict that names them."""
import re

import numpy as np
import pytest

from mlscale.check import online_softmax as check_os
from mlscale.check import online_softmax_merge, solution
from mlscale.check.online_softmax import online_softmax_merge_solution


def via_logsumexp(m1, l1, o1, m2, l2, o2):
    """In log space: lse_i = m_i + log l_i, weights exp(lse_i - lse)."""
    with np.errstate(divide="ignore"):
        a, b = m1 + np.log(l1), m2 + np.log(l2)
    lse = np.logaddexp(a, b)
    o = np.exp(a - lse)[..., None] * o1 + np.exp(b - lse)[..., None] * o2
    return lse, np.ones_like(lse), o  # m = lse itself, then l = 1: a valid (m, l) pair


def rescale_the_smaller(m1, l1, o1, m2, l2, o2):
    """Only the block with the smaller max is rescaled (the other's factor is 1)."""
    first = m1 >= m2
    m = np.where(first, m1, m2)
    big_l, small_l = np.where(first, l1, l2), np.where(first, l2, l1)
    big_o, small_o = np.where(first[..., None], o1, o2), np.where(first[..., None], o2, o1)
    small_w = small_l * np.exp(np.where(first, m2, m1) - m)
    l = big_l + small_w
    o = big_o + (small_w / l)[..., None] * (small_o - big_o)
    return m, l, o


def plain_sum(m1, l1, o1, m2, l2, o2):
    m = np.maximum(m1, m2)
    return m, l1 * np.exp(m1 - m) + l2 * np.exp(m2 - m), o1 + o2


def mean_of_outputs(m1, l1, o1, m2, l2, o2):
    m = np.maximum(m1, m2)
    return m, l1 * np.exp(m1 - m) + l2 * np.exp(m2 - m), (o1 + o2) / 2


def forgot_to_rescale(m1, l1, o1, m2, l2, o2):
    l = l1 + l2
    return np.maximum(m1, m2), l, (l1[..., None] * o1 + l2[..., None] * o2) / l[..., None]


def max_without_rescaling_l(m1, l1, o1, m2, l2, o2):
    m, _, o = online_softmax_merge_solution(m1, l1, o1, m2, l2, o2)
    return m, l1 + l2, o


def no_max_subtracted(m1, l1, o1, m2, l2, o2):
    w1, w2 = l1 * np.exp(m1), l2 * np.exp(m2)  # exp(1000) = inf
    l = w1 + w2
    return np.zeros_like(m1), l, (w1[..., None] * o1 + w2[..., None] * o2) / l[..., None]


def not_normalised(m1, l1, o1, m2, l2, o2):
    m = np.maximum(m1, m2)
    w1, w2 = l1 * np.exp(m1 - m), l2 * np.exp(m2 - m)
    return m, w1 + w2, w1[..., None] * o1 + w2[..., None] * o2


def weights_without_l(m1, l1, o1, m2, l2, o2):
    m = np.maximum(m1, m2)
    e1, e2 = np.exp(m1 - m), np.exp(m2 - m)
    return m, l1 * e1 + l2 * e2, (e1[..., None] * o1 + e2[..., None] * o2) / (e1 + e2)[..., None]


def no_broadcast(m1, l1, o1, m2, l2, o2):
    m = np.maximum(m1, m2)
    w1, w2 = l1 * np.exp(m1 - m), l2 * np.exp(m2 - m)
    return m, w1 + w2, (w1 * o1.sum(-1) + w2 * o2.sum(-1)) / (w1 + w2)


@pytest.mark.parametrize("fn", [online_softmax_merge_solution, via_logsumexp, rescale_the_smaller])
def test_right_answers_written_differently_pass(fn):
    res = online_softmax_merge(fn, verbose=False)
    assert res.passed, res.summary()
    assert res.cases == 6


@pytest.mark.parametrize("fn, says", [
    (plain_sum, r"plain sum \(or mean\) of o1 and o2.*weighted"),
    (mean_of_outputs, r"plain sum \(or mean\) of o1 and o2"),
    (forgot_to_rescale, r"forgot to rescale by exp\(m_i - m\)"),
    (max_without_rescaling_l, r"l = l1 \+ l2: with m = max\(m1, m2\) you must rescale l too"),
    (no_max_subtracted, r"overflow.*logits around 1000.*subtract the max"),
    (not_normalised, r"o is not normalised"),
    (weights_without_l, r"weights the blocks by exp\(m_i - m\) alone"),
    (no_broadcast, r"o has shape .*broadcast with l\[\.\.\., None\]"),
])
def test_mistakes_fail_with_a_verdict_that_names_them(fn, says):
    res = online_softmax_merge(fn, verbose=False)
    assert not res.passed
    assert re.search(says, res.summary()), res.summary()


def test_the_overflow_is_only_blamed_on_huge_logits():
    res = online_softmax_merge(no_max_subtracted, verbose=False)
    assert [f.split(":")[0] for f in res.failures] == ["logits around 1000 (exp overflows above 709)"]


def test_a_stub_is_not_implemented_and_a_wrong_return_is_named(capsys):
    def stub(m1, l1, o1, m2, l2, o2):
        raise NotImplementedError

    res = check_os.merge(stub)
    assert res.not_implemented and not res.passed
    assert "not implemented yet" in capsys.readouterr().out
    res = online_softmax_merge(lambda *a: None, verbose=False)
    assert re.search(r"return the tuple \(m, l, o\)", res.summary())


def test_the_printed_solution_runs_as_pasted(capsys):
    solution("online_softmax_merge")
    src = capsys.readouterr().out
    ns = {}
    exec(src, ns)
    assert online_softmax_merge(ns["online_softmax_merge_solution"], verbose=False).passed
