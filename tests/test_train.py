"""Distributed training: equivalences with single-process training, parameter-server
consistency models, and what the sim clock and trace show."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn, train
from mlscale.comm import CommError

X, Y, XT, YT = data.load_digits()


def single_process(steps, batch_size, make_opt, sizes=(64, 16, 10), accumulate=1):
    """The oracle: one process, the global batch, a plain loop."""
    model = nn.MLP(list(sizes), seed=3, dtype=np.float64)
    opt = make_opt(model)
    stream = train.loop._global_batches(X, Y, batch_size, seed=0)
    for _ in range(steps):
        xb, yb = next(stream)
        model.loss_and_grad(xb, yb)
        opt.step()
    return model.params.copy()


def distributed(p, sync, steps, batch_size, make_opt, sizes=(64, 16, 10), accumulate=1, net=None):
    def prog(comm):
        model = nn.MLP(list(sizes), seed=3, dtype=np.float64)
        hist = train.train(comm, model, make_opt, X, Y, sync=sync, steps=steps,
                           batch_size=batch_size, accumulate=accumulate)
        return model.params.copy(), hist

    return ms.launch(prog, p, network=net)


SGDM = staticmethod(lambda m: nn.SGD(m, lr=0.1, momentum=0.9))


@pytest.mark.parametrize("p", [1, 2, 3, 4])
@pytest.mark.parametrize("sync", [
    train.DataParallel(),
    train.DataParallel(bucket_bytes=2048),
    train.DataParallel(bucket_bytes=2048, overlap=True),
], ids=["per-tensor", "buckets", "overlap"])
def test_data_parallel_equals_one_process_on_the_large_batch(p, sync):
    make = lambda m: nn.SGD(m, lr=0.1, momentum=0.9)  # noqa: E731
    want = single_process(20, 24, make)
    res = distributed(p, sync, 20, 24, make)
    for params, _ in res:
        np.testing.assert_allclose(params, want, rtol=1e-6, atol=1e-9)


def test_gradient_accumulation_equals_the_large_batch():
    make = lambda m: nn.Adam(m, lr=1e-2)  # noqa: E731
    want = single_process(20, 24, make)
    for params, _ in distributed(3, train.DataParallel(bucket_bytes=4096), 20, 24, make, accumulate=2):
        np.testing.assert_allclose(params, want, rtol=1e-6, atol=1e-9)


def test_sync_parameter_server_equals_data_parallel():
    make = lambda t: nn.SGD(t, lr=0.1, momentum=0.9)  # noqa: E731
    want = single_process(20, 24, make)
    res = distributed(4, train.ParameterServer("sync", num_servers=2), 20, 24, make)  # 2 workers
    for params, hist in res[2:]:
        np.testing.assert_allclose(params, want, rtol=1e-6, atol=1e-9)
    assert [h.role for _, h in res] == ["server", "server", "worker", "worker"]


def test_local_sgd_with_h_1_is_data_parallel_and_larger_h_talks_less():
    make = lambda m: nn.SGD(m, lr=0.1)  # noqa: E731
    want = single_process(12, 24, make)
    for params, _ in distributed(3, train.LocalSGD(H=1), 12, 24, make):
        np.testing.assert_allclose(params, want, rtol=1e-6, atol=1e-9)
    h4 = distributed(3, train.LocalSGD(H=4), 12, 24, make)
    assert all(np.array_equal(h4[0][0], q) for q, _ in h4)  # averaged at step 12
    assert not np.allclose(h4[0][0], want, rtol=1e-6)


def test_mlp_reaches_95_percent_on_digits_with_4_simulated_ranks():
    def prog(comm):
        model = nn.MLP([64, 64, 10], seed=0)
        train.train(comm, model, lambda m: nn.SGD(m, lr=0.1, momentum=0.9), X, Y,
                    sync=train.DataParallel(bucket_bytes=8192), steps=200, batch_size=64)
        return train.accuracy(comm, model, XT, YT)

    accs = ms.launch(prog, 4)
    assert accs[0] >= 0.95 and len(set(accs)) == 1


def test_buckets_send_fewer_larger_messages_and_overlap_saves_time():
    net = ms.NetworkModel(alpha=2e-5, beta=1e-9)
    sizes = (64, 256, 256, 10)
    make = lambda m: nn.SGD(m, lr=0.05)  # noqa: E731
    naive = distributed(4, train.DataParallel(), 5, 32, make, sizes=sizes, net=net)
    bucket = distributed(4, train.DataParallel(bucket_bytes=1 << 18), 5, 32, make, sizes=sizes, net=net)
    overlap = distributed(4, train.DataParallel(bucket_bytes=1 << 18, overlap=True), 5, 32, make, sizes=sizes, net=net)
    tn, tb = naive.trace.filter("all_reduce/ring"), bucket.trace.filter("all_reduce/ring")
    assert tn.bytes_sent() == tb.bytes_sent()  # same gradients
    assert len(tb) < len(tn) / 2  # 6 tensors -> 2 buckets
    assert overlap.time < bucket.time < naive.time
    for (a, _), (b, _) in zip(bucket, overlap):
        np.testing.assert_array_equal(a, b)


def test_async_staleness_matches_the_configured_speeds():
    # a fast worker (speed 1) and a slow one (speed 1/3.3); the network is nearly free
    net = ms.NetworkModel(alpha=1e-9, beta=0.0, speeds={1: 1.0, 2: 1 / 3.3}, flops=1e8)
    res = distributed(3, train.ParameterServer("async"), 60, 32, lambda t: nn.SGD(t, lr=0.02), net=net)
    server = res[0][1]
    fast, slow = server.staleness_by_worker[1], server.staleness_by_worker[2]
    # the slow worker's gradient is as old as the fast worker's updates during one slow step
    assert set(slow[1:]) <= {3, 4} and np.mean(slow) == pytest.approx(3.3, abs=0.35)
    # the fast worker's is one update old whenever a slow update landed during its step
    assert set(fast) <= {0, 1} and np.mean(fast) == pytest.approx(1 / 3.3, abs=0.1)
    assert len(fast) + len(slow) == 60 * 2 and len(fast) > 3 * len(slow)


def test_bounded_staleness_beats_sync_under_a_straggler():
    net = ms.NetworkModel(alpha=1e-6, beta=1e-10, speeds={3: 0.25}, flops=1e8)
    make = lambda t: nn.SGD(t, lr=0.02)  # noqa: E731
    runs = {}
    for name, sync in [("sync", train.ParameterServer("sync")),
                       ("s=1", train.ParameterServer("ssp", staleness=1)),
                       ("s=4", train.ParameterServer("ssp", staleness=4)),
                       ("async", train.ParameterServer("async"))]:
        runs[name] = distributed(4, sync, 30, 30, make, net=net)[0][1]  # the server's history
    times = [runs[k].time for k in ("sync", "s=1", "s=4", "async")]
    assert times[0] > times[1] > times[2] >= times[3]
    horizon = runs["s=1"].time / 2
    done_by = [sum(t <= horizon for t in runs[k].clocks) for k in ("s=1", "s=4", "async")]
    assert done_by[0] < done_by[1] <= done_by[2]
    assert max(runs["s=1"].staleness) <= 3 * (1 + 1) + 2  # bounded: (workers-1)(s+1) + slack


def test_the_server_link_carries_2pn_and_sharding_divides_it():
    net = ms.NetworkModel(alpha=1e-6, beta=1e-9)
    make = lambda t: nn.SGD(t, lr=0.05)  # noqa: E731
    one = distributed(5, train.ParameterServer("sync"), 2, 32, make, net=net)
    nbytes = nn.MLP([64, 16, 10], seed=3, dtype=np.float64).nbytes
    into0 = one.trace.bytes_received(0, label="")
    # per step, 4 workers x n bytes of gradients in (plus 8-byte headers)
    assert into0 == pytest.approx(2 * 4 * (nbytes + 8), rel=0.01)
    two = distributed(6, train.ParameterServer("sync", num_servers=2), 2, 32, make, net=net)
    assert two.trace.bytes_received(0, label="") == pytest.approx(into0 / 2, rel=0.02)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_distributed_inference_equals_one_process(p):
    model = nn.MLP([64, 32, 10], seed=1)
    want = model.predict(XT[:101])
    res = ms.launch(lambda c: train.predict(c, model, XT[:101]), p)
    for got in res:
        np.testing.assert_array_equal(got, want)


def test_models_that_differ_at_start_are_caught():
    def prog(comm):
        model = nn.MLP([64, 16, 10], seed=comm.rank)
        train.train(comm, model, lambda m: nn.SGD(m, lr=0.1), X, Y, steps=1, batch_size=8)

    with pytest.raises(CommError, match="checksums disagree"):
        ms.launch(prog, 2)


def test_a_batch_that_does_not_split_is_a_clear_error():
    def prog(comm):
        model = nn.MLP([64, 16, 10], seed=0)
        train.train(comm, model, lambda m: nn.SGD(m, lr=0.1), X, Y, steps=1, batch_size=10)

    with pytest.raises(ValueError, match="global batch 10 does not split over 3 workers"):
        ms.launch(prog, 3)


def test_parameter_server_needs_an_optimizer_factory_and_a_worker():
    def prog(comm):
        model = nn.MLP([64, 16, 10], seed=0)
        train.train(comm, model, nn.SGD(model, lr=0.1), X, Y, sync=train.ParameterServer(), steps=1, batch_size=8)

    with pytest.raises(TypeError, match="function params -> optimizer"):
        ms.launch(prog, 2)
    with pytest.raises(ValueError, match="at least one more rank"):
        ms.launch(prog, 1)


def _train_on(comm, sync, steps):
    model = nn.MLP([64, 16, 10], seed=3, dtype=np.float64)
    hist = train.train(comm, model, lambda t: nn.SGD(t, lr=0.05), X, Y, sync=sync, steps=steps, batch_size=24)
    return model.params.copy(), hist.updates, hist.role


@pytest.mark.mpi
def test_the_same_training_program_runs_on_mpi_processes():
    # synchronous data parallel: the same bits on real processes as on simulated ranks
    sim = ms.launch(_train_on, 3, args=(train.DataParallel(bucket_bytes=2048), 10))
    mpi = ms.launch(_train_on, 3, args=(train.DataParallel(bucket_bytes=2048), 10), backend="mpi", timeout=120)
    for (a, _, _), (b, _, _) in zip(sim, mpi):
        np.testing.assert_array_equal(a, b)
    # an asynchronous parameter server (any-source receives) on real processes
    res = ms.launch(_train_on, 3, args=(train.ParameterServer("async"), 5), backend="mpi", timeout=120)
    assert res[0][2] == "server" and res[0][1] == 2 * 5  # the server applied steps x workers gradients
    assert all(np.isfinite(p).all() for p, _, _ in res)
