"""3D parallel training (DP x PP x TP, ZeRO-1 on dp, 1F1B on pp) equals one device in
float64: every rank's parameter shards after several Adam steps, and the losses."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import global_losses, mesh_coords, shard_gpt_state, train_3d, train_single

TOL = dict(rtol=1e-12, atol=1e-12)
CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
LR = 1e-2


def _batches(n=3, b=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)), rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def oracle():
    batches = _batches()
    losses, model = train_single(CFG, batches, lr=LR)
    return batches, losses, {k: v.copy() for k, v in model.named_params().items()}


def _check(res, dims, sp, oracle):
    batches, ref_losses, ref_params = oracle
    dp, pp, tp = dims
    np.testing.assert_allclose(global_losses(res), ref_losses, **TOL)
    seen = set()
    for rank, r in enumerate(res):
        assert tuple(r["coords"].values()) == mesh_coords(rank, dims)
        want = shard_gpt_state(ref_params, CFG, tp, r["coords"]["tp"], sp)
        assert r["params"], f"rank {rank} holds no parameters"
        for name, v in r["params"].items():
            np.testing.assert_allclose(v, want[name], **TOL, err_msg=f"rank {rank} {name}")
            seen.add((name, r["coords"]["tp"]))
        assert (r["losses"][0] is None) == (r["coords"]["pp"] != pp - 1)
    # the stages together hold every parameter of every tp rank
    n_names = len(shard_gpt_state(ref_params, CFG, tp, 0, sp))
    assert len(seen) == n_names * tp


@pytest.mark.parametrize("dims,sp,zero", [((2, 2, 2), False, True), ((2, 2, 2), True, True),
                                          ((2, 1, 1), False, True), ((1, 2, 1), False, True),
                                          ((1, 1, 2), True, False), ((1, 2, 2), True, True),
                                          ((1, 1, 1), False, True)])
def test_3d_equals_one_device(dims, sp, zero, oracle):
    dp, pp, tp = dims
    res = ms.launch(train_3d, dp * pp * tp, args=(CFG, oracle[0], dp, pp, tp, 2, LR, sp, zero))
    _check(res, dims, sp, oracle)
    labels = set(res.trace.labels())
    if pp > 1:
        assert {"pp/activations", "pp/gradients"} <= labels
    if tp > 1 and sp:
        assert "reduce_scatter/ring" in labels and "all_gather/ring" in labels


def test_rank_order_is_row_major():
    assert [mesh_coords(r, (2, 2, 2)) for r in range(8)] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]

    def prog(comm):
        from mlscale.parallel import mesh_comms
        coords, comms = mesh_comms(comm, 2, 3, 2)
        return coords, {k: (c.rank, c.world_size) for k, c in comms.items()}

    for rank, (coords, sub) in enumerate(ms.launch(prog, 12)):
        assert tuple(coords.values()) == mesh_coords(rank, (2, 3, 2))
        assert sub == {"dp": (coords["dp"], 2), "pp": (coords["pp"], 3), "tp": (coords["tp"], 2)}


def test_clear_errors(oracle):
    with pytest.raises(ValueError, match=r"2 x 2 x 2 = 8 ranks, but the communicator has world_size=6"):
        ms.launch(train_3d, 6, args=(CFG, oracle[0], 2, 2, 2))
    odd = [(x[:3], y[:3]) for x, y in oracle[0]]
    with pytest.raises(ValueError, match="3 sequences, not divisible by dp=2"):
        ms.launch(train_3d, 2, args=(CFG, odd, 2, 1, 1))
    cfg = nn.GPTConfig(vocab_size=11, seq_len=9, d_model=16, num_heads=4, num_layers=2)
    with pytest.raises(ValueError, match="9 tokens cannot be split evenly over 2"):
        ms.launch(train_3d, 2, args=(cfg, oracle[0], 1, 1, 2, 1, LR, True))
    tied = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2, tie_embeddings=True)
    with pytest.raises(ValueError, match="tie_embeddings=False"):
        ms.launch(train_3d, 1, args=(tied, oracle[0]))


def test_loss_curves_coincide_and_fall():
    batches = _batches(n=4, b=4, seed=1)
    curves = ms.parallel.loss_curves(CFG, batches, lr=LR)
    assert list(curves) == ["1 device", "DP", "TP", "PP", "3D"]
    for name, losses in curves.items():
        np.testing.assert_allclose(losses, curves["1 device"], **TOL, err_msg=name)
    import matplotlib
    matplotlib.use("Agg")
    ax = ms.parallel.plot_loss_curves(curves)
    assert len(ax.lines) == 5


def test_mfu_on_sim_from_virtual_time():
    """Compute charged at the NetworkModel's rate: with free communication one device's
    MFU is 1 (the charged FLOPs are the model FLOPs); tensor parallelism repeats the
    replicated LM head on both ranks, and communication adds time."""
    batches = _batches(n=2)
    free = ms.NetworkModel(alpha=0.0, beta=0.0, flops=1e9)
    one = ms.launch(train_3d, 1, args=(CFG, batches, 1, 1, 1, 2, LR), network=free)
    m1 = ms.parallel.sim_mfu(CFG, batches, one, 1e9)
    assert m1 == pytest.approx(1.0, rel=1e-12)  # every model FLOP charged, nothing else
    tp = ms.launch(train_3d, 2, args=(CFG, batches, 1, 1, 2, 2, LR), network=free)
    m2 = ms.parallel.sim_mfu(CFG, batches, tp, 1e9)
    head = 6 * CFG.d_model * CFG.vocab_size  # FLOPs per token of the LM head, done by both tp ranks
    total = nn.model_flops(CFG, 1)  # per token; the blocks' share is split in two
    assert m2 == pytest.approx(total / ((total - head) + 2 * head), rel=1e-12)
    slow = ms.launch(train_3d, 2, args=(CFG, batches, 1, 1, 2, 2, LR), network=ms.NetworkModel(flops=1e9))
    assert ms.parallel.sim_mfu(CFG, batches, slow, 1e9) < m2  # communication costs time
