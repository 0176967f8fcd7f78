"""Training with interleaved 1F1B and ZB-H1 (issue 11): gradients and Adam steps equal
one device's; the sim clock shows each schedule's makespan; the bytes sent are the
boundaries crossed; W really is split from B (the weight grads appear only at W)."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel.pp_modern import interleaved_makespan, zb_h1_makespan
from mlscale.parallel.pp_train import ScheduledPipeline

from _pipeline_ref import pipeline_data, single_device_steps  # noqa: E402

SIZES = [6, 9, 8, 7, 8, 9, 6, 7, 8, 3]  # nine Linear layers
FREE = ms.NetworkModel(alpha=0.0, beta=0.0)


def _data(batch=12, seed=0):
    return pipeline_data(SIZES, batch, seed)


def _train(comm, schedule, m, v):
    model = nn.MLP(SIZES, activation="gelu", dtype=np.float64, seed=1)
    pipe = ScheduledPipeline(comm, model, m, schedule, num_chunks=v)
    opt = nn.Adam(model.params, lr=0.01, impl="reference")  # each rank steps its own slices only
    losses, grads = [], []
    for _ in range(3):
        losses.append(pipe.step(X_, y_))
        g = np.zeros_like(model.grads)
        for lo, hi in pipe.param_ranges:
            g[lo:hi] = model.grads[lo:hi]
        grads.append(g)
        opt.step(g)
    return pipe.param_ranges, losses, grads, model.params.copy()


X_, y_ = _data()


@pytest.mark.parametrize("schedule, p, m, v", [
    ("interleaved", 2, 4, 2), ("interleaved", 3, 6, 3), ("interleaved", 4, 4, 2), ("interleaved", 2, 2, 4),
    ("zb-h1", 1, 3, 1), ("zb-h1", 2, 5, 1), ("zb-h1", 3, 3, 1), ("zb-h1", 4, 12, 1), ("1f1b", 3, 5, 1)])
def test_gradients_and_adam_steps_equal_one_device(schedule, p, m, v):
    ref, ref_losses, ref_grads = single_device_steps(SIZES, X_, y_, 3)
    res = ms.launch(_train, p, args=(schedule, m, v))
    covered = []
    for rank, (ranges, losses, grads, params) in enumerate(res):
        for lo, hi in ranges:
            covered.append((lo, hi))
            for t in range(3):
                np.testing.assert_allclose(grads[t][lo:hi], ref_grads[t][lo:hi], rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(params[lo:hi], ref.params[lo:hi], rtol=1e-10, atol=1e-13)
        holds_last = rank == p - 1
        assert (losses == [None] * 3) != holds_last
        if holds_last:
            np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    covered.sort()
    assert covered[0][0] == 0 and covered[-1][1] == ref.num_params
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))  # the chunks tile the model


def _clock(comm, schedule, m, v, times):
    model = nn.MLP(SIZES, activation="gelu", dtype=np.float64, seed=1)
    pipe = ScheduledPipeline(comm, model, m, schedule, num_chunks=v, times=times)
    pipe.step(X_, y_)
    return comm.clock, pipe.nbytes


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (3, 6, 3), (3, 3, 1)])
def test_interleaved_training_takes_megatrons_makespan_on_the_sim_clock(p, m, v):
    res = ms.launch(_clock, p, args=("interleaved", m, v, (1.0, 2.0)), network=FREE)
    assert max(c for c, _ in res) == pytest.approx(interleaved_makespan(p, m, v, 1.0, 2.0))
    assert len(res.trace.messages) == 2 * m * (p * v - 1)  # activations and gradients per boundary


@pytest.mark.parametrize("p, m", [(2, 4), (3, 6), (4, 4)])
def test_zb_h1_training_takes_its_makespan_on_the_sim_clock(p, m):
    res = ms.launch(_clock, p, args=("zb-h1", m, 1, (1.0, 1.0, 0.5)), network=FREE)
    assert max(c for c, _ in res) == pytest.approx(zb_h1_makespan(p, m, 1.0, 1.0, 0.5))


def test_w_adds_the_weight_grads_and_b_does_not():
    from mlscale.parallel.pipeline import PipelineStage

    model = nn.MLP(SIZES, activation="gelu", dtype=np.float64, seed=1)
    st = PipelineStage(model, 0, 1)
    model.grads[...] = 0
    out = st.forward(X_, 0)
    dx = st.backward_input(np.ones_like(out), 0)
    assert dx.shape == X_.shape and not model.grads.any()  # B: the input's gradient only
    st.backward_weight(0)
    full = nn.MLP(SIZES, activation="gelu", dtype=np.float64, seed=1)
    full.grads[...] = 0
    st2 = PipelineStage(full, 0, 1)
    st2.backward(np.ones_like(st2.forward(X_, 0)), 0)
    np.testing.assert_allclose(model.grads, full.grads, rtol=1e-13)  # B + W = one backward
    assert st.stash == {} and st.stash_bytes == 0
    with pytest.raises(RuntimeError, match="W of micro-batch 0 before its B"):
        st.backward_weight(0)


def test_clear_errors():
    model = nn.MLP(SIZES, dtype=np.float64, seed=1)
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zigzag'"):
        ms.launch(lambda c: ScheduledPipeline(c, model, 2, "zigzag"), 2)
    with pytest.raises(ValueError, match="multiple of num_stages=2"):
        ms.launch(lambda c: ScheduledPipeline(c, model, 3, "interleaved", num_chunks=2), 2)
    with pytest.raises(ValueError, match="use num_chunks=1"):
        ms.launch(lambda c: ScheduledPipeline(c, model, 2, "zb-h1", num_chunks=2), 2)
    with pytest.raises(ValueError, match=r"\(t_fwd, t_bwd, t_w\)"):
        ms.launch(lambda c: ScheduledPipeline(c, model, 2, "zb-h1", times=(1.0, 2.0)), 2)
