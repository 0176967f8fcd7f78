"""The notebook 07 exercise checkers accept the solutions and reject wrong answers with a diagnosis."""
import numpy as np
import pytest

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

    for fn, words in [(all_add, "added every pair's mask"), (no_mask, "no mask was added"), (floats, "uint64"),
                      (returns_none, "returned None")]:
        r = cf.pairwise_mask(fn, verbose=False)
        assert not r.passed and any(words in f for f in r.failures), (fn.__name__, r.failures)


def test_hints_and_solutions_registered(capsys):
    core.hint("fedavg")
    core.hint("pairwise_mask")
    core.solution("fedavg")
    out = capsys.readouterr().out
    assert "n_k / n" in out and "v > u" in out and "def solution_fedavg" in out


# ---- verdicts that name the mistake (issue 8) -------------------------------------------

def _mask_wrong_seed(x_enc, u, seeds):
    from mlscale.federated.secure import prg
    y = x_enc.copy()
    for v, s in seeds.items():
        r = prg(s + u, x_enc.size)          # not the seed the pair shares: its own variant
        y = y + r if v > u else y - r
    return y


def _mask_all_added(x_enc, u, seeds):
    from mlscale.federated.secure import prg
    y = x_enc.copy()
    for s in seeds.values():
        y += prg(s, x_enc.size)
    return y


def _mask_swapped_peer_seed(x_enc, u, seeds):   # the seeds shifted by one peer: two terms wrong
    from mlscale.federated.secure import prg
    y = x_enc.copy()
    peers = sorted(seeds)
    for i, v in enumerate(peers):
        s = seeds[peers[(i + 1) % len(peers)]] if u == 2 else seeds[v]
        r = prg(s, x_enc.size)
        y = y + r if v > u else y - r
    return y


def _mask_one_wrong_seed(x_enc, u, seeds):      # client 2 masks peer 3 with the seed it shares with 1
    from mlscale.federated.secure import prg
    y = x_enc.copy()
    for v, s in seeds.items():
        r = prg(seeds[1] if (u == 2 and v == 3) else s, x_enc.size)
        y = y + r if v > u else y - r
    return y


def _mask_none(x_enc, u, seeds):
    return x_enc.copy()


def _mask_subtract_first(x_enc, u, seeds):  # right, written otherwise: subtract the v < u terms first
    from mlscale.federated.secure import prg
    y = x_enc.copy()
    for v in sorted(seeds):
        if v < u:
            y -= prg(seeds[v], x_enc.size)
    for v in sorted(seeds):
        if v > u:
            y += prg(seeds[v], x_enc.size)
    return y


@pytest.mark.parametrize("fn, words", [
    (_mask_wrong_seed, "must come from the seed client"),
    (_mask_all_added, "added every pair's mask"),
    (_mask_swapped_peer_seed, "must come from the seed client"),
    (_mask_one_wrong_seed, "client 2: a mask was made from another pair's seed (the term for peer 1 or 3)"),
    (_mask_none, "no mask was added"),
])
def test_pairwise_mask_verdicts_name_the_mistake(fn, words):
    from mlscale.check import federated as fc
    r = fc.pairwise_mask(fn, verbose=False)
    assert not r.passed and any(words in f for f in r.failures), r.failures
    assert not any("the mask was not added" in f for f in r.failures)


def test_pairwise_mask_accepts_another_correct_order():
    from mlscale.check import federated as fc
    assert fc.pairwise_mask(_mask_subtract_first, verbose=False).passed
