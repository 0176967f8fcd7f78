"""simulate_step: the training step on every rank of the cluster (issue 12's 1,024-rank
what-if, at a test's size): its step time agrees with predict()'s composition, its events
are counted, and what symmetry hides (a straggler) shows."""
import numpy as np
import pytest

from mlscale.meta.hardware import get_cluster
from mlscale.nn import GPTConfig
from mlscale.parallel.pp_modern import interleaved_schedule
from mlscale.whatif import simulate_step

CFG = GPTConfig(vocab_size=51200, seq_len=1024, d_model=1024, num_heads=16, num_layers=8)


@pytest.fixture(scope="module")
def run():
    return simulate_step(CFG, "DGX-A100", tp=2, pp=4, dp=4, micro_batch=1, global_batch=32)


def test_every_rank_is_simulated_and_the_step_agrees_with_the_composition(run):
    assert run.num_ranks == 32 and len(run.clocks) == 32
    assert run.step_time == max(run.clocks)
    # the same layer costs, the messages themselves instead of the composed p2p and dp terms:
    # the sends here are non-blocking, so the step is at most predict's (p2p on the critical
    # path) and at least that less the p2p time (with the bubble it inflates)
    b = run.prediction.breakdown
    busy = b["compute"] + b["tp_comm"] + b["pp_p2p"]
    lower = run.prediction.step_time - b["pp_p2p"] * (1 + b["pp_bubble"] / busy)
    assert lower <= run.step_time <= run.prediction.step_time * (1 + 1e-9)
    # the model FLOPs are predict's: TFLOP/s per GPU follows the step time
    assert run.tflops_per_gpu == pytest.approx(run.prediction.model_flops / (run.step_time * 32) / 1e12)


def test_events_are_the_schedule_and_the_ring(run):
    pp, dp, tp = 4, 4, 2
    m, v = run.prediction.config["num_microbatches"], run.prediction.config["num_chunks"]
    ops = interleaved_schedule(pp, m, v)
    P = pp * v
    # p2p messages per pipeline: every F crosses P-1 boundaries, every B too; dp ring: 2(dp-1) per rank
    p2p = 2 * m * (P - 1)
    spans = sum(len(o) for o in ops) + pp  # one compute per op, one optimizer per rank
    per_pipeline = p2p + spans
    tied = 2 * tp * dp * 2  # first and last stage ranks: a ring all-reduce of 2, 2 messages each
    assert run.events == tp * dp * per_pipeline + 32 * 2 * (dp - 1) + tied


def test_a_straggler_slows_the_whole_step():
    net = get_cluster("DGX-A100").network(speeds={5: 0.5})  # rank 5 computes at half speed
    slow = simulate_step(CFG, "DGX-A100", tp=2, pp=4, dp=4, micro_batch=1, global_batch=32, network=net)
    fast = simulate_step(CFG, "DGX-A100", tp=2, pp=4, dp=4, micro_batch=1, global_batch=32)
    assert slow.step_time > 1.3 * fast.step_time
    # rank 5's tp group (4, 5) waits for it every layer, its pipeline and its dp peers wait for
    # that group: the slowdown reaches every rank through the pipelines and the dp all-reduce
    assert min(slow.clocks) > max(fast.clocks)


def test_a_configuration_that_does_not_fit_is_the_real_out_of_memory():
    from mlscale.meta import OutOfMemoryError

    big = GPTConfig(vocab_size=51200, seq_len=2048, d_model=12288, num_heads=96, num_layers=96)
    with pytest.raises(OutOfMemoryError, match="CUDA out of memory"):
        simulate_step(big, "DGX-A100", tp=8, pp=4, dp=2, micro_batch=1, global_batch=64)
