"""Prefetch and overlap inside 3D ZeRO (three_d_zero.ShardedStage, train_3d(prefetch=,
overlap=)): the next layer's all-gather and the layer above's reduce-scatter run on the dp
communicator's communication stream. The trajectories equal zero=0 and the synchronous
zero=3 to 1e-12 (float64); every rank's bytes on the dp dim are unchanged (trace); on sim
the step's virtual time shrinks (the synchronous one is compute + every collective's
alpha-beta time, exactly), with all-gather messages inside compute spans of the same
rank; the memory ledger counts two layers in flight (params and grads) instead of one."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.comm import NetworkModel
from mlscale.parallel import (ShardedStage, dp_wire_bytes, global_losses, mesh_coords, shard_range, stage_params,
                              train_3d, zero_memory_by_kind)

TOL = dict(rtol=1e-12, atol=1e-12)
CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
LR, STEPS, M = 1e-2, 2, 2
# communication comparable to compute: a block's all-gather ~ 10 us, its forward ~ 80 us
NET = NetworkModel(alpha=1e-5, beta=1e-9, flops=1e9, eager_limit=None)


def _batches(b=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)), rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)))
            for _ in range(STEPS)]


BATCHES = _batches()


def _run(dims, zero, prefetch=False, overlap=False, network=None, m=M, batches=BATCHES):
    dp, pp, tp = dims

    def prog(comm):
        return train_3d(comm, CFG, batches, dp, pp, tp, m, LR, False, zero, prefetch=prefetch, overlap=overlap)
    return ms.launch(prog, dp * pp * tp, network=network)


def _dp_bytes(res, dims):
    out = [0] * len(res)
    for msg in res.trace.messages:
        a, b = mesh_coords(msg.src, dims), mesh_coords(msg.dst, dims)
        if a[1:] == b[1:]:
            out[msg.src] += msg.nbytes
    return out


def _same_params(a, b):
    pa, pb = stage_params(a), stage_params(b)
    for rank in range(len(a)):
        assert pa[rank].keys() == pb[rank].keys() and pa[rank]
        for name, v in pa[rank].items():
            np.testing.assert_allclose(v, pb[rank][name], **TOL, err_msg=f"rank {rank} {name}")


@pytest.mark.parametrize("dims", [(2, 1, 1), (2, 2, 1), (2, 2, 2)])
def test_prefetch_and_overlap_keep_the_trajectory_and_the_bytes(dims):
    dp = dims[0]
    base = _run(dims, 0)
    sync = _run(dims, 3)
    for zero, pf in ((3, True), (2, False)):
        res = _run(dims, zero, prefetch=pf, overlap=True)
        np.testing.assert_allclose(global_losses(res), global_losses(base), **TOL)
        _same_params(res, base)
        sent = _dp_bytes(res, dims)
        for rank, r in enumerate(res):  # the ring formulas, rank by rank
            assert sent[rank] == STEPS * dp_wire_bytes(r["units"], dp, zero, M)[r["coords"]["dp"]], (zero, rank)
        if zero == 3:  # the same messages as the synchronous run: only their timing moved
            assert sent == _dp_bytes(sync, dims)
            assert len(res.trace) == len(sync.trace)
            assert sorted((m.src, m.dst, m.nbytes, m.label) for m in res.trace.messages) == \
                sorted((m.src, m.dst, m.nbytes, m.label) for m in sync.trace.messages)
    np.testing.assert_allclose(global_losses(sync), global_losses(base), **TOL)


def _pairs(units):
    return max([a + b for a, b in zip(units, units[1:])] + list(units))


@pytest.mark.parametrize("dims", [(2, 1, 1), (2, 2, 1)])
def test_memory_two_layers_in_flight_with_prefetch_one_without(dims):
    dp = dims[0]
    runs = {f: _run(dims, 3, prefetch=f, overlap=f) for f in (False, True)}
    for f, res in runs.items():
        for r in res:
            units, d = r["units"], r["coords"]["dp"]
            mine = sum(shard_range(n, dp, d)[1] - shard_range(n, dp, d)[0] for n in units)
            flight = _pairs(units) if f else max(units)
            assert r["memory"]["params"] == (mine + flight) * 8
            assert r["memory"]["grads"] == (mine + flight) * 8
            assert r["memory"] == zero_memory_by_kind(units, dp, d, 3, 8, prefetch=f, overlap=f)
    for a, b in zip(runs[False], runs[True]):  # the price of prefetch: one more (neighbouring) layer
        assert b["memory"]["params"] - a["memory"]["params"] == (_pairs(a["units"]) - max(a["units"])) * 8 > 0
        assert b["memory"]["optimizer"] == a["memory"]["optimizer"]


def _ring_time(n, p, itemsize=8):
    """Alpha-beta seconds of one ring all-gather or reduce-scatter of n elements on p ranks
    (eager sends): p - 1 steps, each as long as its largest chunk."""
    chunks = [shard_range(n, p, r)[1] - shard_range(n, p, r)[0] for r in range(p)]
    return (p - 1) * (NET.alpha + NET.beta * itemsize * max(chunks))


def _compute_spans(res, rank):
    return [s for s in res.trace.spans if s.rank == rank and s.label in ("forward", "backward")]


def _inside(msg, spans):
    return any(s.start <= msg.start and msg.end <= s.end for s in spans)


def test_prefetch_shortens_the_step_on_sim_and_hides_the_all_gathers():
    dims, dp = (2, 1, 1), 2
    one = BATCHES[:1]
    sync = _run(dims, 3, network=NET, batches=one)
    pref = _run(dims, 3, prefetch=True, overlap=True, network=NET, batches=one)
    units = sync[0]["units"]
    compute = sum(s.end - s.start for s in _compute_spans(sync, 0))
    assert compute == pytest.approx(sum(s.end - s.start for s in _compute_spans(pref, 0)), rel=1e-12)
    # synchronous: compute, then every collective in turn, M x (2 all-gathers + 1 reduce-scatter) per unit
    comm = M * sum(3 * _ring_time(n, dp) for n in units if n)
    assert sync.time == pytest.approx(compute + comm, rel=1e-12)
    # prefetch: each op's first all-gather (layer 0 forward, last layer backward) is exposed
    # for sure, so compute + those bounds it below; the block-behind-block gathers below are
    # hidden whole, so it saves at least their time
    first = [n for n in units if n][0], [n for n in units if n][-1]
    lower = compute + M * (_ring_time(first[0], dp) + _ring_time(first[1], dp))
    assert lower <= pref.time < sync.time
    assert sync.time - pref.time >= M * 2 * (CFG.num_layers - 1) * _ring_time(units[1], dp)
    print(f"\nsim step (2,1,1) m={M}: sync {sync.time * 1e6:.1f} us = compute {compute * 1e6:.1f} + comm "
          f"{comm * 1e6:.1f}; prefetch+overlap {pref.time * 1e6:.1f} us (bound {lower * 1e6:.1f})")
    # the all-gathers of the prefetch run sit inside the rank's own compute spans: each op's
    # gather of the next block runs while this block computes (forward: block i+1 behind
    # block i, backward: block i-1 behind block i), M x 2 x (L - 1) messages of a block's
    # chunk per rank (p = 2: one message each); behind the parameter-free-FLOP layers
    # (embedding, norm) nothing hides
    block = units[1]
    for rank in range(dp):
        spans = _compute_spans(pref, rank)
        lo, hi = shard_range(block, dp, rank)  # a ring all-gather on 2 ranks: my chunk to the other
        gathers = [m for m in pref.trace.messages if m.src == rank and m.label.startswith("all_gather")]
        hidden = [m for m in gathers if _inside(m, spans)]
        big = [m for m in hidden if m.nbytes == (hi - lo) * 8]
        assert len(big) == M * 2 * (CFG.num_layers - 1)
        labels = {s.label for s in spans for m in hidden if s.start <= m.start and m.end <= s.end}
        assert labels == {"forward", "backward"}
        rs = [m for m in pref.trace.messages if m.src == rank and m.label.startswith("reduce_scatter")]
        assert any(_inside(m, spans) for m in rs)  # overlap: reduce-scatters during the backward
        # the synchronous run: no message of a rank overlaps its compute at all
        sspans = _compute_spans(sync, rank)
        assert not any(s.start < m.end and m.start < s.end for m in sync.trace.messages if m.src == rank
                       for s in sspans)


@pytest.mark.parametrize("dims", [(2, 2, 1), (2, 2, 2)])
def test_prefetch_with_pipeline_and_tensor_parallel_is_faster_too(dims):
    sync = _run(dims, 3, network=NET, batches=BATCHES[:1])
    pref = _run(dims, 3, prefetch=True, overlap=True, network=NET, batches=BATCHES[:1])
    assert pref.time < sync.time
    np.testing.assert_allclose(global_losses(pref), global_losses(sync), **TOL)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"prefetch=True needs zero=3"):
        _run((2, 1, 1), 2, prefetch=True, batches=BATCHES[:1])
    with pytest.raises(ValueError, match=r"overlap=True needs zero=2 or 3"):
        _run((2, 1, 1), 1, overlap=True, batches=BATCHES[:1])
    with pytest.raises(ValueError, match=r"prefetch=True needs zero=3"):
        ShardedStage(nn.GPT(CFG, seed=0, dtype=np.float64), 0, 1, None, 2, lambda s: nn.Adam(s), prefetch=True)
