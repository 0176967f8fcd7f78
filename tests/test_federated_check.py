"""The notebook 07 exercise checkers accept the solutions and reject wrong answers with a diagnosis."""
import numpy as np

from mlscale.check import core
from mlscale.check import federated as cf
from mlscale.federated.secure import prg


def test_fedavg_checker_accepts_solutions():
    assert cf.fedavg(cf.solution_fedavg, verbose=False).passed
    from mlscale.federated import fedavg_reference
    assert cf.fedavg(fedavg_reference, verbose=False).passed


def test_fedavg_checker_rejects_wrong_answers():
    def plain_mean(results):
        return [np.mean([a[j] for a, _ in results], axis=0) for j in range(len(results[0][0]))]

    def weighted_sum(results):
        return [sum(n * a[j] for a, n in results) for j in range(len(results[0][0]))]

    def divides_by_clients(results):
        return [sum(n * a[j] for a, n in results) / len(results) for j in range(len(results[0][0]))]

    def in_place(results):
        total = sum(n for _, n in results)
        for arrays, n in results:
            for a in arrays:
                a *= n / total
        return [sum(a[j] for a, _ in results) for j in range(len(results[0][0]))]

    def first_array_only(results):
        return cf.solution_fedavg(results)[:1]

    for fn, words in [(plain_mean, "plain mean"), (weighted_sum, "divide by the total"),
                      (divides_by_clients, "divided by the number of clients"),
                      (in_place, "in place"), (first_array_only, "return a list of")]:
        r = cf.fedavg(fn, verbose=False)
        assert not r.passed and any(words in f for f in r.failures), (fn.__name__, r.failures)


def test_fedavg_checker_stub_and_crash():
    def todo(results):
        raise NotImplementedError

    r = cf.fedavg(todo, verbose=False)
    assert r.not_implemented and not r.passed and "not implemented yet" in r.summary()

    def crashes(results):
        return 1 / 0

    r = cf.fedavg(crashes, verbose=False)
    assert not r.passed and "ZeroDivisionError" in r.failures[0]


def test_mask_checker():
    assert cf.pairwise_mask(cf.solution_pairwise_mask, verbose=False).passed

    def flipped(x, u, seeds):        # the opposite convention also cancels: accepted
        y = x.copy()
        for v, s in seeds.items():
            y = y - prg(s, x.size) if v > u else y + prg(s, x.size)
        return y

    assert cf.pairwise_mask(flipped, verbose=False).passed

    def all_add(x, u, seeds):
        y = x.copy()
        for s in seeds.values():
            y += prg(s, x.size)
        return y

    def no_mask(x, u, seeds):
        return x

    def floats(x, u, seeds):
        return x.astype(np.float64) + sum(prg(s, x.size).astype(np.float64) for s in seeds.values())

    def returns_none(x, u, seeds):
        x += 1

    for fn, words in [(all_add, "do not sum"), (no_mask, "mask was not added"), (floats, "uint64"),
                      (returns_none, "returned None")]:
        r = cf.pairwise_mask(fn, verbose=False)
        assert not r.passed and any(words in f for f in r.failures), (fn.__name__, r.failures)


def test_hints_and_solutions_registered(capsys):
    core.hint("fedavg")
    core.hint("pairwise_mask")
    core.solution("fedavg")
    out = capsys.readouterr().out
    assert "n_k / n" in out and "v > u" in out and "def solution_fedavg" in out
