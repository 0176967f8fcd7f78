"""D-PSGD (Lian et al. 2017) in the training loop: equivalences with data parallelism,
a NumPy oracle of p models and W, traffic per step, and virtual time on sim networks."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn, train
from mlscale.decentralized import topology as T
from mlscale.train.gossip import DPSGD, average_model, consensus_distance

X, Y, XT, YT = data.load_digits()
SIZES = (64, 16, 10)


def distributed(p, sync, steps, batch_size, make_opt, net=None, evaluate=False):
    def prog(comm):
        model = nn.MLP(list(SIZES), seed=3, dtype=np.float64)
        hist = train.train(comm, model, make_opt, X, Y, sync=sync, steps=steps, batch_size=batch_size)
        params = model.params.copy()
        if not evaluate:
            return params, hist
        spread = consensus_distance(comm, model)
        average_model(comm, model)
        return params, hist, spread, model.accuracy(XT, YT)

    return ms.launch(prog, p, network=net)


def oracle(p, W, steps, batch_size, lr, order):
    """p models in one process: every step each takes its gradient on its slice, then
    x <- W (x - lr g) (step then gossip) or x <- W x - lr g (the paper's order)."""
    models = [nn.MLP(list(SIZES), seed=3, dtype=np.float64) for _ in range(p)]
    stream = train.loop._global_batches(X, Y, batch_size, seed=0)
    for _ in range(steps):
        batch = next(stream)
        grads = []
        for r, m in enumerate(models):
            m.loss_and_grad(*data.split_batch(batch, r, p))
            grads.append(m.grads.copy())
        P = np.stack([m.params for m in models])           # (p, num_params)
        G = np.stack(grads)
        P = W @ (P - lr * G) if order == "step_then_gossip" else W @ P - lr * G
        for r, m in enumerate(models):
            m.params[...] = P[r]
    return np.stack([m.params for m in models])


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_complete_graph_with_uniform_weights_is_data_parallel(p, momentum):
    make = lambda m: nn.SGD(m, lr=0.1, momentum=momentum)  # noqa: E731
    want = distributed(p, train.DataParallel(), 15, 60, make)[0][0]
    res = distributed(p, DPSGD(T.complete(p), mixing="uniform"), 15, 60, make)
    for params, _ in res:
        np.testing.assert_allclose(params, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["step_then_gossip", "paper"])
@pytest.mark.parametrize("p,topo", [(3, "ring"), (5, "ring"), (6, "exponential"), (4, "star")])
def test_dpsgd_equals_the_p_models_oracle(order, p, topo):
    top = T.make_topology(topo, p)
    W = top.mixing_matrix()
    want = oracle(p, W, 8, 60, 0.1, order)
    res = distributed(p, DPSGD(top, order=order), 8, 60, lambda m: nn.SGD(m, lr=0.1))
    np.testing.assert_allclose(np.stack([r[0] for r in res]), want, rtol=1e-10, atol=1e-12)
    if not np.allclose(W, 1 / p):                           # (ring(3) is the complete graph)
        assert not np.allclose(want[0], want[1])           # the models really differ


def test_ring_trains_the_digits_mlp():
    res = distributed(8, DPSGD("ring"), 300, 48, lambda m: nn.SGD(m, lr=0.2), evaluate=True)
    _, hist, spread, acc = res[0]
    assert acc > 0.9                                        # the averaged model
    assert np.mean(hist.losses[-20:]) < 0.5 * np.mean(hist.losses[:20])
    assert 0 < spread < 1.0                                 # the ranks disagree, but not much


@pytest.mark.parametrize("p,topo,busiest", [(8, "ring", 2), (8, "exponential", 3), (6, "star", 5),
                                            (8, "one_peer_exponential", 1)])
def test_traffic_per_step_is_degree_times_the_model(p, topo, busiest):
    steps = 6
    res = distributed(p, DPSGD(topo), steps, 48, lambda m: nn.SGD(m, lr=0.1))
    nbytes = nn.MLP(list(SIZES), dtype=np.float64).nbytes
    top = T.make_topology(topo, p)
    sent = res.trace.per_rank_bytes(label="gossip")
    assert sent == [sum(top.degree(r, t) for t in range(steps)) * nbytes for r in range(p)]
    assert max(sent) == steps * busiest * nbytes
    # the rest is the loop's start-up model check, nothing per step
    assert all(lab.startswith("all_gather") for lab in res.trace.labels() if lab != "gossip")


def test_consensus_learning_local_steps_and_rounds():
    steps, H, k = 12, 4, 3
    res = distributed(4, DPSGD("ring", local_steps=H, gossip_rounds=k), steps, 48, lambda m: nn.SGD(m, lr=0.1))
    nbytes = nn.MLP(list(SIZES), dtype=np.float64).nbytes
    assert res.trace.per_rank_bytes(label="gossip") == [steps // H * k * 2 * nbytes] * 4


def _step_time(p, sync, net, steps=24):
    res = distributed(p, sync, steps, 48 * 4, lambda m: nn.SGD(m, lr=0.1), net=net)
    clocks = np.array([h.clocks for _, h in res])           # (p, steps)
    return (clocks[:, -1].max() - clocks[:, 3].max()) / (steps - 4)


def test_dpsgd_beats_all_reduce_on_a_high_latency_network_but_not_on_a_fast_one():
    slow = ms.NetworkModel(alpha=1e-3, beta=1e-9)           # 1 ms per message
    fast = ms.NetworkModel(alpha=1e-6, beta=1e-8)           # latency negligible, bandwidth-bound
    p = 16
    ar = train.DataParallel(bucket_bytes=1 << 30)           # one ring all-reduce per step
    ratio_slow = _step_time(p, ar, slow) / _step_time(p, DPSGD("ring"), slow)
    ratio_fast = _step_time(p, ar, fast) / _step_time(p, DPSGD("ring"), fast)
    # ring all-reduce: 2(p-1) = 30 latencies per step; D-PSGD on a ring: about 2
    assert ratio_slow > 6
    assert ratio_fast < 1.1                                  # bandwidth-bound: no gain, or a loss
    # and the gain grows with p
    assert _step_time(4, ar, slow) / _step_time(4, DPSGD("ring"), slow) < ratio_slow / 2


def test_dpsgd_errors():
    with pytest.raises(ValueError, match="order"):
        DPSGD("ring", order="random")
    with pytest.raises(ValueError, match="local_steps"):
        DPSGD("ring", local_steps=0)
    with pytest.raises(ValueError, match="paper"):
        DPSGD("ring", order="paper", gossip_rounds=2)
    with pytest.raises(ValueError, match="a, b >= 3"):
        distributed(8, DPSGD("torus"), 2, 48, lambda m: nn.SGD(m, lr=0.1))
    with pytest.raises(ValueError, match="has 4"):
        distributed(4, DPSGD(T.ring(5)), 2, 48, lambda m: nn.SGD(m, lr=0.1))
