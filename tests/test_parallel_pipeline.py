"""Pipeline parallelism: gradients and Adam steps equal the single-device model's on the
full batch; the simulator's clocks show the bubble (p-1)/(m+p-1); GPipe stashes m
micro-batches of activations, 1F1B at most p."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.comm import DeadlockError
from mlscale.parallel import (PipelineParallel, bubble_fraction, gpipe_schedule, measured_bubble,
                              one_f_one_b_schedule, partition_layers, peak_in_flight, stage_ops, timeline)

from _pipeline_ref import pipeline_data, single_device_steps  # noqa: E402

SIZES = [6, 9, 8, 7, 3]  # four Linear layers: up to four stages
FREE = ms.NetworkModel(alpha=0.0, beta=0.0)  # negligible network: compute only


def _data(batch=12, seed=0):
    return pipeline_data(SIZES, batch, seed)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_gradients_and_adam_steps_equal_single_device(p, schedule):
    X, y = _data()
    ref, ref_losses, ref_grads = single_device_steps(SIZES, X, y, 3)

    def prog(comm, m):
        model = nn.MLP(SIZES, activation="gelu", dtype=np.float64, seed=1)
        pipe = PipelineParallel(comm, model, m, schedule)
        o = nn.Adam(pipe.params, lr=0.01, impl="reference")
        losses, grads = [], []
        for _ in range(3):
            losses.append(pipe.step(X, y))
            grads.append(pipe.grads.copy())
            o.step(pipe.grads)
        return pipe.stage.param_range, losses, grads, pipe.params.copy()

    for m in (1, 2, 5, 12):  # 5 micro-batches of a batch of 12: uneven sizes
        res = ms.launch(prog, p, args=(m,))
        covered = 0
        for rank, ((lo, hi), losses, grads, params) in enumerate(res):
            assert lo == covered
            covered = hi
            for t in range(3):
                np.testing.assert_allclose(grads[t], ref_grads[t][lo:hi], rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(params, ref.params[lo:hi], rtol=1e-10, atol=1e-13)
            if rank == p - 1:
                np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
            else:
                assert losses == [None] * 3
        assert covered == ref.num_params


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_bubble_from_sim_clocks(p, schedule):
    X, y = _data()
    t_fwd, t_bwd = 1e-3, 2e-3

    def prog(comm, m):
        pipe = PipelineParallel(comm, nn.MLP(SIZES, dtype=np.float64), m, schedule, times=(t_fwd, t_bwd))
        pipe.step(X, y)
        return pipe.stage.peak_in_flight, pipe.stage.peak_stash_bytes

    for m in (1, 2, 3, 4, 8, 12):
        res = ms.launch(prog, p, args=(m,), network=FREE)
        busy = m * (t_fwd + t_bwd)
        assert abs((1 - busy / res.time) - bubble_fraction(p, m)) < 1e-9
        assert abs(res.time - (m + p - 1) * (t_fwd + t_bwd)) < 1e-12
        peaks = [r[0] for r in res]
        if schedule == "gpipe":
            assert peaks == [m] * p
        else:
            assert peaks == [min(p - s, m) for s in range(p)] and max(peaks) <= p
        # the sim spans of every rank follow the pure timeline, slot by slot
        slots = timeline(p, m, schedule, t_fwd, t_bwd)
        for s in range(p):
            spans = sorted((sp.start, sp.end, sp.label) for sp in res.trace.spans if sp.rank == s)
            want = sorted((sl.start, sl.end, "forward" if sl.op == "F" else "backward")
                          for sl in slots if sl.stage == s)
            assert len(spans) == len(want) == 2 * m
            for a, b in zip(spans, want):
                assert abs(a[0] - b[0]) < 1e-12 and abs(a[1] - b[1]) < 1e-12 and a[2] == b[2]


def test_stash_bytes_gpipe_vs_1f1b():
    X, y = _data(batch=32)

    def prog(comm, schedule):
        pipe = PipelineParallel(comm, nn.MLP(SIZES, dtype=np.float64), 8, schedule)
        pipe.step(X, y)
        return pipe.stage.peak_stash_bytes

    g, f = ms.launch(prog, 4, args=("gpipe",)), ms.launch(prog, 4, args=("1f1b",))
    for s in range(4):  # equal micro-batches: bytes scale with micro-batches in flight
        assert g[s] * (4 - s) == f[s] * 8


def test_big_activations_do_not_deadlock_but_blocking_1f1b_does():
    rng = np.random.default_rng(0)
    sizes = [64, 128, 128, 10]  # (256, 128) float64 = 256 KiB, above the 64 KiB eager limit
    X, y = rng.standard_normal((1024, 64)), rng.integers(0, 10, 1024)
    ref = nn.MLP(sizes, dtype=np.float64, seed=0)
    ref.loss_and_grad(X, y)

    def prog(comm, schedule, blocking):
        pipe = PipelineParallel(comm, nn.MLP(sizes, dtype=np.float64, seed=0), 4, schedule, blocking=blocking)
        pipe.step(X, y)
        lo, hi = pipe.stage.param_range
        return float(np.abs(pipe.grads - ref.grads[lo:hi]).max())

    for schedule in ("gpipe", "1f1b"):
        res = ms.launch(prog, 3, args=(schedule, False))
        assert max(res) < 1e-12
        assert max(m.nbytes for m in res.trace.messages) > 65536
        assert set(res.trace.labels()) == {"pp/activations", "pp/gradients"}
    assert max(ms.launch(prog, 3, args=("gpipe", True))) < 1e-12  # GPipe's order survives blocking sends
    with pytest.raises(DeadlockError):
        ms.launch(prog, 3, args=("1f1b", True))


def test_pure_schedules():
    assert gpipe_schedule(2, 2) == [[("F", 0), ("F", 1), ("B", 0), ("B", 1)]] * 2
    assert one_f_one_b_schedule(3, 4)[0] == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1),
                                             ("B", 2), ("B", 3)]
    assert one_f_one_b_schedule(3, 4)[2] == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2),
                                             ("F", 3), ("B", 3)]
    for p in (1, 2, 3, 5):
        for m in (1, 2, 4, 7):
            for s in ("gpipe", "1f1b"):
                slots = timeline(p, m, s, 1.0, 2.0)
                assert len(slots) == 2 * m * p
                assert abs(measured_bubble(slots, p) - (p - 1) / (m + p - 1)) < 1e-12
            assert peak_in_flight(stage_ops(p, m, "gpipe")) == [m] * p
            assert peak_in_flight(stage_ops(p, m, "1f1b")) == [min(p - s, m) for s in range(p)]
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)


def test_partition_layers():
    layers = nn.MLP([4, 4, 4, 4, 4, 2]).layers  # 5 Linear, 4 ReLU: 9 layers
    assert partition_layers(layers, 1) == [(0, 9)]
    assert partition_layers(layers, 2) == [(0, 6), (6, 9)]
    assert partition_layers(layers, 5) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    with pytest.raises(ValueError, match="6 stages needs at least 6 layers with parameters, the model has 5"):
        partition_layers(layers, 6)


def test_clear_errors():
    X, y = _data()
    model = lambda: nn.MLP([6, 5, 3], dtype=np.float64)  # noqa: E731  two stages at most
    with pytest.raises(ValueError, match="3 stages needs at least 3"):
        ms.launch(lambda comm: PipelineParallel(comm, model(), 2), 3)
    for m in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_microbatches"):
            ms.launch(lambda comm: PipelineParallel(comm, model(), m), 2)
    with pytest.raises(ValueError, match="more than the batch size 12"):
        ms.launch(lambda comm: PipelineParallel(comm, model(), 13).step(X, y), 2)
    with pytest.raises(ValueError, match="unknown pipeline schedule"):
        ms.launch(lambda comm: PipelineParallel(comm, model(), 2, "zigzag"), 2)
    with pytest.raises(ValueError, match="num_stages"):
        timeline(0, 3)
    with pytest.raises(ValueError, match="deadlocks"):
        timeline(2, 2, [[("B", 0), ("F", 0)], [("F", 0), ("B", 0)]])
