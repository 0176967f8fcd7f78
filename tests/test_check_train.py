"""The data-parallel exercise checker (notebook 03) accepts right answers and rejects
wrong ones, each with a reason that says what to fix."""
import numpy as np
import pytest

from mlscale import check
from mlscale.check import solutions


def test_reference_solution_passes():
    r = check.data_parallel_step(solutions.data_parallel_step, verbose=False)
    assert r.passed and r.cases == 12 and not r.failures  # world sizes 1-4 x 3 bucket sizes


def one_all_reduce(comm, model):  # the two-argument form: no buckets
    comm.all_reduce(model.grads, op="mean", out=model.grads)


def by_send_recv(comm, model, bucket_bytes):  # right values without all_reduce: the count is not checked
    for b in model.buckets(bucket_bytes):
        g = model.grads[b.slice]
        if comm.rank == 0:
            for src in range(1, comm.world_size):
                g += comm.recv(src)
            g /= comm.world_size
            for dst in range(1, comm.world_size):
                comm.send(g, dst)
        else:
            comm.send(g, 0)
            comm.recv(0, out=g)


@pytest.mark.parametrize("fn, cases", [(one_all_reduce, 4), (by_send_recv, 12)])
def test_other_right_answers_pass(fn, cases):
    r = check.data_parallel_step(fn, verbose=False)
    assert r.passed and r.cases == cases, r.failures


def test_not_implemented_is_reported_not_raised(capsys):
    def todo(comm, model, bucket_bytes):
        raise NotImplementedError("write it")

    r = check.data_parallel_step(todo)
    assert not r.passed and r.not_implemented
    assert "not implemented yet" in capsys.readouterr().out


def sums(comm, model, bucket_bytes):
    for b in model.buckets(bucket_bytes):
        g = model.grads[b.slice]
        comm.all_reduce(g, out=g)  # no division by world_size


def averages_params(comm, model, bucket_bytes):
    comm.all_reduce(model.params, op="mean", out=model.params)


def forgets_a_bucket(comm, model, bucket_bytes):
    for b in model.buckets(bucket_bytes)[:-1]:  # the last bucket (the first layer) is skipped
        g = model.grads[b.slice]
        comm.all_reduce(g, op="mean", out=g)


def returns_without_writing_back(comm, model, bucket_bytes):
    return comm.all_reduce(model.grads, op="mean")


def rebinds_the_name(comm, model, bucket_bytes):
    g = model.grads
    g = comm.all_reduce(g, op="mean")    # a new array: model.grads is left alone
    return None


def does_nothing(comm, model, bucket_bytes):
    pass


def per_tensor(comm, model, bucket_bytes):  # right values, one all-reduce per tensor
    for g in model.named_grads().values():
        flat = g.reshape(-1)
        comm.all_reduce(flat, op="mean", out=flat)


def divides_by_the_wrong_count(comm, model, bucket_bytes):
    for b in model.buckets(bucket_bytes):
        g = model.grads[b.slice]
        comm.all_reduce(g, out=g)
        g /= comm.world_size + 1


def ranks_disagree_on_buckets(comm, model, bucket_bytes):
    bs = model.buckets(bucket_bytes)
    for b in (bs if comm.rank == 0 else bs[::-1]):  # different order on different ranks
        g = model.grads[b.slice]
        comm.all_reduce(g, op="mean", out=g)


@pytest.mark.parametrize(
    "wrong, says",
    [
        (sums, "times the average: you summed"),
        (averages_params, "changed model.params"),
        (forgets_a_bucket, "['0.weight'] were not averaged"),
        (forgets_a_bucket, "['0.weight', '0.bias'] were not averaged"),
        (returns_without_writing_back, "returned the average but left model.grads unchanged"),
        (does_nothing, "nothing was averaged"),
        (rebinds_the_name, "the result was not written back"),
        (per_tensor, "6 comm.all_reduce call(s) (one per tensor?) for 2 bucket(s)"),
        (divides_by_the_wrong_count, "the mean over ranks (the global-batch gradient) is"),
        (ranks_disagree_on_buckets, "p=2, bucket_bytes=1 (6 buckets): CommError"),
    ],
)
def test_wrong_answers_are_rejected_with_a_reason(wrong, says):
    r = check.data_parallel_step(wrong, verbose=False)
    assert not r.passed
    assert any(says in f for f in r.failures), r.failures


def test_every_wrong_value_is_caught_on_a_world_size_of_3():
    for wrong in (sums, averages_params, forgets_a_bucket, does_nothing, divides_by_the_wrong_count):
        r = check.data_parallel_step(wrong, world_sizes=(3,), verbose=False)
        assert not r.passed and len(r.failures) == 3, (wrong.__name__, r.failures)


def test_value_failures_are_listed_before_call_counts():
    r = check.data_parallel_step(forgets_a_bucket, verbose=False)
    kinds = ["call(s)" in f for f in r.failures]
    assert kinds == sorted(kinds) and not kinds[0]  # counts only at the end


def test_learner_exceptions_are_reported():
    def crashes(comm, model, bucket_bytes):
        return model.grads[10 ** 9]

    r = check.data_parallel_step(crashes, world_sizes=(2,), verbose=False)
    assert not r.passed and all("raised IndexError" in f for f in r.failures)


def test_hint_and_solution_print(capsys):
    check.hint("data_parallel_step")
    check.solution("data_parallel_step")
    out = capsys.readouterr().out
    assert "model.buckets(bucket_bytes)" in out and "def data_parallel_step" in out


def test_the_oracle_is_the_global_batch():
    """The checker's premise: the mean over ranks of slice gradients is the global gradient."""
    from mlscale.check import train as ct

    batches = ct._data()
    grads, _ = ct._oracle(batches)
    xb, yb = batches[0]
    m = ct._model()
    parts = []
    for r in range(3):
        m.loss_and_grad(xb[8 * r:8 * (r + 1)], yb[8 * r:8 * (r + 1)])
        parts.append(m.grads.copy())
    np.testing.assert_allclose(np.mean(parts, axis=0), grads[0], rtol=1e-12, atol=1e-15)
