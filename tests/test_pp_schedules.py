"""Pipeline schedules beyond 1F1B (issue 11): interleaved 1F1B and ZB-H1. Each schedule
runs every op once in a dependency order; its makespan, played and on the sim engine's
clock, equals the published formula; peak activations as the papers say."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.parallel.pp_modern import (interleaved_makespan, interleaved_schedule, peak_activations, play,
                                        run_on_sim, zb_h1_makespan, zb_h1_schedule)
from mlscale.parallel.pp_schedule import makespan, one_f_one_b_schedule, peak_in_flight

FREE = ms.NetworkModel(alpha=0.0, beta=0.0)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("v", [1, 2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_interleaved_runs_every_op_once_and_meets_megatrons_makespan(p, v, groups):
    m = groups * p
    ops = interleaved_schedule(p, m, v)
    for s, stage in enumerate(ops):  # every (op, micro-batch, chunk) exactly once
        assert sorted(stage) == sorted((op, j, c) for op in "FB" for j in range(m) for c in range(v))
    for tf, tb in ((1.0, 2.0), (1.0, 1.0), (0.5, 1.5)):
        assert makespan(play(ops, v, tf, tb)) == pytest.approx(interleaved_makespan(p, m, v, tf, tb))


def test_interleaved_order_is_megatrons():
    ops = interleaved_schedule(2, 4, 2)  # p=2, m=4, v=2: rank 0 warms up with 2*1 + 1*2 = 4 forwards
    assert ops[0][:4] == [("F", 0, 0), ("F", 1, 0), ("F", 0, 1), ("F", 1, 1)]
    assert ops[0][4:6] == [("F", 2, 0), ("B", 0, 1)]  # steady state: one forward, one backward (last chunk first)
    assert ops[1][:2] == [("F", 0, 0), ("F", 1, 0)]  # rank 1 (last) warms up with (v - 1) p = 2
    with pytest.raises(ValueError, match="multiple of num_stages=4"):
        interleaved_schedule(4, 6, 2)


def test_more_chunks_shrink_the_bubble_as_one_over_v():
    p, m = 4, 8
    ideal = m * 3.0
    bubbles = [makespan(play(interleaved_schedule(p, m, v), v, 1.0, 2.0)) - ideal for v in (1, 2, 4)]
    assert bubbles == pytest.approx([(p - 1) * 3.0 / v for v in (1, 2, 4)])


@pytest.mark.parametrize("p", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("extra", [0, 1, 5])
@pytest.mark.parametrize("times", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, 1.0, 0.5)])
def test_zb_h1_meets_its_makespan_and_beats_1f1b(p, extra, times):
    m = p + extra
    tf, tb, tw = times
    ops = zb_h1_schedule(p, m)
    for stage in ops:
        assert sorted(stage) == sorted((op, j, 0) for op in "FBW" for j in range(m))
    got = makespan(play(ops, 1, tf, tb, tw))
    assert got == pytest.approx(zb_h1_makespan(p, m, tf, tb, tw))
    one_f_one_b = makespan(play(one_f_one_b_schedule(p, m), 1, tf, tb + tw))  # B and W as one backward
    assert one_f_one_b == pytest.approx((m + p - 1) * (tf + tb + tw))
    assert one_f_one_b - got == pytest.approx(2 * (p - 1) * tw)  # the bubble shrinks by 2 (p - 1) t_w


def test_zb_h1_keeps_1f1bs_peak_activations_and_interleaving_costs_some():
    p, m = 4, 8
    assert max(peak_activations(zb_h1_schedule(p, m))) == max(peak_in_flight(one_f_one_b_schedule(p, m))) == p
    assert peak_activations(zb_h1_schedule(p, m)) == [p] * p  # stage s holds p - s in flight and s W's back
    il = peak_activations(interleaved_schedule(p, m, 2), 2)
    assert il[0] == pytest.approx(p + (p - 1) / 2 + 0.0) or il[0] > p  # more than 1F1B's p on stage 0
    assert il == sorted(il, reverse=True)


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (3, 6, 2), (4, 8, 3), (3, 3, 1)])
def test_interleaved_on_the_sim_clock_equals_the_formula(p, m, v):
    ops = interleaved_schedule(p, m, v)
    res = ms.launch(run_on_sim, p, args=(ops, v, 1.0, 2.0), network=FREE)
    assert max(res) == pytest.approx(interleaved_makespan(p, m, v, 1.0, 2.0))
    assert len(res.trace.messages) == 2 * m * (p * v - 1)  # one activation and one gradient per boundary


@pytest.mark.parametrize("p, m", [(2, 4), (4, 8), (5, 7)])
def test_zb_h1_on_the_sim_clock_equals_the_formula(p, m):
    res = ms.launch(run_on_sim, p, args=(zb_h1_schedule(p, m), 1, 1.0, 1.0, 0.5), network=FREE)
    assert max(res) == pytest.approx(zb_h1_makespan(p, m, 1.0, 1.0, 0.5))


def test_a_broken_order_is_named():
    ops = [[("F", 0, 0), ("B", 0, 0)], [("B", 0, 0), ("F", 0, 0)]]  # stage 1 runs B before its F
    with pytest.raises(ValueError, match="deadlocks"):
        play(ops)
    with pytest.raises(ValueError, match="unknown op 'X'"):
        play([[("X", 0, 0)]])
