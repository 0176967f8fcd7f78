"""ZeRO: the memory formulas against the paper's example, and a ZeRO-1 optimizer whose
trajectory equals data parallel + Adam, with 1/N of the optimizer state per rank and the
bytes of one all-reduce on the wire."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.data import split_batch
from mlscale.parallel import ZeroOptimizer, shard_sizes, zero_bytes_per_param, zero_memory

SIZES = [5, 7, 3]  # 66 parameters: not a multiple of 4, 5 or 8
STEPS, BATCH = 4, 120


def test_paper_example_7_5b_on_64_gpus():
    # Rajbhandari et al. 2020, figure 1: Psi = 7.5 B, N = 64, K = 12
    gb = [zero_memory(7.5e9, 64, stage) / 1e9 for stage in range(4)]
    assert gb[0] == pytest.approx(120.0)
    assert round(gb[1], 1) == 31.4 and round(gb[2], 1) == 16.6 and round(gb[3], 1) == 1.9
    assert gb == pytest.approx([120.0, 31.40625, 16.640625, 1.875])


@pytest.mark.parametrize("n", [1, 2, 3, 8, 64, 1024])
def test_bytes_per_param(n):
    assert zero_bytes_per_param(0, n) == 16
    assert zero_bytes_per_param(1, n) == pytest.approx(4 + 12 / n)
    assert zero_bytes_per_param(2, n) == pytest.approx(2 + 14 / n)
    assert zero_bytes_per_param(3, n) == pytest.approx(16 / n)
    assert zero_bytes_per_param(1, n, k=4) == pytest.approx(4 + 4 / n)


def test_memory_errors():
    with pytest.raises(ValueError, match="stage=4"):
        zero_memory(10, 2, 4)
    with pytest.raises(ValueError, match="world_size=0"):
        zero_memory(10, 0, 1)


def _train(comm, mode, X, y):
    model = nn.MLP(SIZES, dtype=np.float64, seed=0)
    if mode == "dp":
        opt = nn.Adam(model.params, lr=0.02, impl="reference")
    else:
        opt = ZeroOptimizer(comm, model.params, lambda s: nn.Adam(s, lr=0.02, impl="reference"),
                            naive=(mode == "naive"))
    traj = []
    for t in range(STEPS):
        xb, yb = X[t * BATCH:(t + 1) * BATCH], y[t * BATCH:(t + 1) * BATCH]
        model.loss_and_grad(*split_batch((xb, yb), comm.rank, comm.world_size))
        if mode == "dp":
            comm.all_reduce(model.grads, op="mean", algorithm="ring", out=model.grads)
            opt.step(model.grads)
        else:
            opt.step(model.grads)
        traj.append(model.params.copy())
    state = opt.state_numel() if mode != "dp" else opt.m.size + opt.v.size
    return np.array(traj), state, model.num_params


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8])
def test_zero1_equals_data_parallel_adam(p):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((STEPS * BATCH, SIZES[0])), rng.integers(0, SIZES[-1], STEPS * BATCH)
    dp = ms.launch(_train, p, args=("dp", X, y))
    z = ms.launch(_train, p, args=("zero", X, y))
    naive = ms.launch(_train, p, args=("naive", X, y))
    n = dp[0][2]
    for r in range(p):
        np.testing.assert_allclose(z[r][0], dp[r][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(naive[r][0], dp[r][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(z[r][0], z[0][0])  # every rank holds the same params
    # optimizer state: m and v of this rank's chunk only, 1/N of data parallel's
    assert [s for _, s, _ in z] == [2 * k for k in shard_sizes(n, p)]
    assert sum(s for _, s, _ in z) == dp[0][1] == 2 * n
    # bytes on the wire: reduce-scatter + all-gather = one all-reduce; naive = 1.5 of it
    rs, ag = z.trace.bytes_sent(label="reduce_scatter"), z.trace.bytes_sent(label="all_gather")
    assert rs + ag == z.trace.bytes_sent() == dp.trace.bytes_sent(label="all_reduce")
    assert rs == ag == STEPS * (p - 1) * n * 8
    assert naive.trace.bytes_sent() * 2 == 3 * dp.trace.bytes_sent()


def test_zero_errors():
    with pytest.raises(TypeError, match="flat 1-D params"):
        ms.launch(lambda comm: ZeroOptimizer(comm, np.zeros((2, 3)), lambda s: nn.Adam(s)), 2)
    with pytest.raises(ValueError, match="3 parameters cannot be shared by 4 ranks"):
        ms.launch(lambda comm: ZeroOptimizer(comm, np.zeros(3), lambda s: nn.Adam(s)), 4)
    with pytest.raises(TypeError, match="on the shard it is given"):
        ms.launch(lambda comm: ZeroOptimizer(comm, np.zeros(8), lambda s: nn.Adam(np.zeros(8))), 2)

    def wrong_grads(comm):
        ZeroOptimizer(comm, np.zeros(8), lambda s: nn.Adam(s)).step(np.zeros(7))

    with pytest.raises(ValueError, match="grads of shape"):
        ms.launch(wrong_grads, 2)
