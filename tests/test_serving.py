"""Serving with replicas and dynamic batching: predictions equal the single model's,
latencies equal the message + service times exactly on sim, batches form as the
policy says, saturation throughput equals the queueing bound, bad input is refused."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn, serving
from mlscale.comm.errors import CommError

X_TEST = data.load_digits()[2][:240]
NET = ms.NetworkModel(alpha=1e-5, beta=1e-9)
SERVICE = (2e-3, 1e-4)  # seconds: fixed + per request


def _serve(comm, arrivals, max_batch, max_wait, batch_time=SERVICE, X=None):
    model = nn.MLP([64, 16, 10], seed=3)
    X = X_TEST[: len(arrivals)] if X is None else X
    return serving.serve(comm, model, X, arrivals, max_batch=max_batch, max_wait=max_wait, batch_time=batch_time)


@pytest.mark.parametrize("p", [2, 3, 5])
@pytest.mark.parametrize("max_batch,max_wait", [(1, 0.0), (4, 0.0), (4, 1e-3), (16, 5e-3)])
def test_predictions_equal_the_model(p, max_batch, max_wait):
    arrivals = serving.poisson_arrivals(rate=1500, n=120, seed=p)
    res = ms.launch(_serve, p, args=(arrivals, max_batch, max_wait), network=NET)
    stats = res[0]
    want = nn.MLP([64, 16, 10], seed=3).predict(X_TEST[:120])
    assert np.array_equal(stats.predictions, want)
    assert not np.isnan(stats.finished).any() and np.all(stats.finished >= stats.dispatched)
    assert np.all(stats.dispatched >= stats.arrival - 1e-15)
    assert max(b[3] for b in stats.batches) <= max_batch
    assert sum(b[3] for b in stats.batches) == 120
    assert sum(res[1:]) == len(stats.batches)  # each replica returns the batches it served
    assert set(stats.replica.tolist()) <= set(range(1, p))


def test_light_load_latency_is_two_messages_plus_service():
    arrivals = np.arange(5, dtype=np.float64)  # one request a second: never a queue
    stats = ms.launch(_serve, 2, args=(arrivals, 1, 0.0), network=NET)[0]
    msg = NET.alpha + 8 * NET.beta  # one int64 id out, one int64 prediction back
    np.testing.assert_allclose(stats.latency, 2 * msg + SERVICE[0] + SERVICE[1], rtol=1e-9)


def test_a_lone_request_waits_max_wait_for_company():
    arrivals = np.array([0.0, 1.0])
    stats = ms.launch(_serve, 2, args=(arrivals, 4, 5e-3), network=NET)[0]
    assert stats.dispatched[0] == pytest.approx(5e-3, rel=1e-9)  # waited for a batch to fill
    assert stats.dispatched[1] == pytest.approx(1.0, rel=1e-9)  # the last request goes at once
    assert [b[3] for b in stats.batches] == [1, 1]


def test_simultaneous_requests_fill_batches_on_several_replicas():
    arrivals = np.zeros(10)
    stats = ms.launch(_serve, 4, args=(arrivals, 4, 1.0), network=NET)[0]
    sizes = sorted(b[3] for b in stats.batches)
    assert sizes == [2, 4, 4]  # two full batches at once, the rest when nothing more comes
    assert len({b[0] for b in stats.batches}) == 3  # on three different replicas
    msg = NET.alpha + 4 * 8 * NET.beta  # the frontend's port sends the batches one after the other
    assert sorted(set(stats.dispatched.tolist())) == pytest.approx([0.0, msg, 2 * msg], rel=1e-9)


@pytest.mark.parametrize("replicas,max_batch", [(1, 1), (1, 8), (3, 1), (2, 8)])
def test_saturation_throughput_is_the_queueing_bound(replicas, max_batch):
    fixed, per = SERVICE
    capacity = replicas * max_batch / (fixed + per * max_batch)  # requests per second
    arrivals = np.zeros(240)  # everything at once: saturated; 240 fills every round of batches
    stats = ms.launch(_serve, replicas + 1, args=(arrivals, max_batch, 0.0), network=NET)[0]
    assert stats.throughput == pytest.approx(capacity, rel=0.05)
    assert stats.throughput <= capacity * 1.001


def test_batching_keeps_latency_bounded_where_one_at_a_time_explodes():
    arrivals = serving.poisson_arrivals(rate=1500, n=len(X_TEST), seed=0)  # 3x one replica's 476/s
    single = ms.launch(_serve, 2, args=(arrivals, 1, 0.0), network=NET)[0]
    batched = ms.launch(_serve, 2, args=(arrivals, 8, 1e-3), network=NET)[0]
    assert single.percentile(99) > 10 * batched.percentile(99)
    assert batched.percentile(99) < 0.01 and batched.mean_batch > 2


def test_the_same_run_gives_the_same_times():
    arrivals = serving.poisson_arrivals(rate=800, n=60, seed=5)
    a = ms.launch(_serve, 3, args=(arrivals, 4, 1e-3), network=NET)[0]
    b = ms.launch(_serve, 3, args=(arrivals, 4, 1e-3), network=NET)[0]
    assert np.array_equal(a.finished, b.finished) and a.batches == b.batches


def test_poisson_arrivals():
    t = serving.poisson_arrivals(rate=1000, n=20000, seed=0)
    assert np.all(np.diff(t) > 0)
    assert np.mean(np.diff(t)) == pytest.approx(1e-3, rel=0.03)
    with pytest.raises(ValueError, match="rate must be > 0"):
        serving.poisson_arrivals(0, 10)
    with pytest.raises(ValueError, match="n must be a whole number"):
        serving.poisson_arrivals(10, 0)


def test_bad_input_is_refused_with_the_fix():
    arr = np.zeros(4)
    with pytest.raises(CommError, match="at least one replica: launch 2 or more ranks"):
        ms.launch(_serve, 1, args=(arr, 1, 0.0))
    with pytest.raises(ValueError, match="max_batch must be a whole number >= 1"):
        ms.launch(_serve, 2, args=(arr, 0, 0.0))
    with pytest.raises(ValueError, match="max_wait must be >= 0"):
        ms.launch(_serve, 2, args=(arr, 1, -1.0))
    with pytest.raises(ValueError, match="arrivals must be sorted"):
        ms.launch(_serve, 2, args=(np.array([1.0, 0.0, 2.0, 3.0]), 1, 0.0))
    with pytest.raises(ValueError, match=r"one time per row of X \(5\)"):
        ms.launch(_serve, 2, args=(arr, 1, 0.0, SERVICE, X_TEST[:5]))
    with pytest.raises(ValueError, match="batch_time"):
        ms.launch(_serve, 2, args=(arr, 1, 0.0, (-1.0, 0.0)))


@pytest.mark.mpi
def test_on_mpi_processes():
    pytest.importorskip("mpi4py", reason='needs mpi4py and mpiexec: pip install "mlscale[mpi]"')
    arrivals = np.linspace(0, 0.05, 30)
    stats = ms.launch(_serve, 3, args=(arrivals, 4, 1e-3, (0.0, 0.0)), backend="mpi", timeout=120)[0]
    assert np.array_equal(stats.predictions, nn.MLP([64, 16, 10], seed=3).predict(X_TEST[:30]))
    assert np.all(stats.finished >= stats.arrival)
