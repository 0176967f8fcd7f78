"""Tensor-parallel attention and the TP transformer block (Megatron-LM), with and without
sequence parallelism: equal to the single-device nn.Block in float64, forward and
backward; the collectives counted from the trace; activation memory per rank measured."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import TPBlock, count_kinds, seq_range, shard_block_state, shard_sizes

TOL = dict(rtol=1e-12, atol=1e-12)
B, S = 3, 12


def _cfg(heads=4, d=12, d_ff=20, norm="layernorm", recompute=None):
    return nn.GPTConfig(vocab_size=7, seq_len=S, d_model=d, num_heads=heads, num_layers=2, d_ff=d_ff, norm=norm,
                        recompute=recompute)


def _oracle(cfg, seed=1):
    ref = nn.Sequential([nn.Block(cfg)], seed=seed, dtype=np.float64)
    p = ref.named_params()
    rng = np.random.default_rng(seed + 7)
    for k in p:  # non-trivial norms and biases, so their gradients are tested too
        if "ln" in k or k.endswith("bias"):
            p[k][...] += 0.1 * rng.standard_normal(p[k].shape)
    X, dY = rng.standard_normal((B, S, cfg.d_model)), rng.standard_normal((B, S, cfg.d_model))
    Y = ref.forward(X)
    ref.zero_grad()
    dX = ref.backward(dY)
    strip = lambda d: {k[2:]: v.copy() for k, v in d.items()}  # noqa: E731  "0.ln1.weight" -> "ln1.weight"
    return X, dY, Y, dX, strip(ref.named_params()), strip(ref.named_grads()), nn.saved_nbytes(ref.layers[0])


def _run(cfg, tp, sp, regather=True):
    X, dY, Y, dX, P, G, _ = _oracle(cfg)

    def prog(comm):
        blk = TPBlock(comm, cfg, sequence_parallel=sp, regather=regather)
        model = nn.Sequential([blk], dtype=np.float64)
        model.load_state_dict({"0." + k: v for k, v in shard_block_state(P, cfg, tp, comm.rank).items()})
        lo, hi = seq_range(S, tp, comm.rank) if sp else (0, S)
        y = model.forward(X[:, lo:hi].copy())
        act = nn.saved_nbytes(blk)
        model.zero_grad()
        dx = model.backward(dY[:, lo:hi].copy())
        synced = blk.sync_grads()
        grads = {k[2:]: v.copy() for k, v in model.named_grads().items()}
        return y, dx, grads, act, count_kinds(blk.ops), synced, (lo, hi)

    return ms.launch(prog, tp), (X, dY, Y, dX, P, G)


def _check_equal(res, tp, cfg, Y, dX, G):
    for rank, (y, dx, grads, _, _, _, (lo, hi)) in enumerate(res):
        np.testing.assert_allclose(y, Y[:, lo:hi], **TOL)
        np.testing.assert_allclose(dx, dX[:, lo:hi], **TOL)
        want = shard_block_state(G, cfg, tp, rank)
        assert set(grads) == set(want)
        for k, g in grads.items():
            np.testing.assert_allclose(g, want[k], **TOL, err_msg=f"tp={tp} rank {rank} {k}")


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
def test_tp_block_equals_single_device(tp):
    cfg = _cfg()
    res, (X, dY, Y, dX, P, G) = _run(cfg, tp, sp=False)
    _check_equal(res, tp, cfg, Y, dX, G)
    nb = B * S * cfg.d_model * 8
    for *_, kinds, synced, _ in res:  # one all-reduce each way per sub-block (attention, MLP)
        assert kinds == {("forward", "all_reduce"): [2, 2 * nb], ("backward", "all_reduce"): [2, 2 * nb]}
        assert synced == 0
    tr = res.trace
    assert set(tr.labels()) <= {"all_reduce/ring"}
    assert tr.bytes_sent() == 4 * 2 * (tp - 1) * nb  # four ring all-reduces of (b, s, d)
    assert len(tr.messages) == 4 * 2 * tp * (tp - 1)


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
@pytest.mark.parametrize("regather", [True, False])
def test_sp_block_equals_single_device_with_the_same_bytes(tp, regather):
    cfg = _cfg()
    res, (X, dY, Y, dX, P, G) = _run(cfg, tp, sp=True, regather=regather)
    _check_equal(res, tp, cfg, Y, dX, G)
    nb, shard = B * S * cfg.d_model * 8, B * S * cfg.d_model * 8 // tp
    extra = 2 if regather else 0  # Megatron gathers the column-parallel inputs again in backward
    for *_, kinds, synced, _ in res:
        assert kinds == {("forward", "all_gather"): [2, 2 * shard], ("forward", "reduce_scatter"): [2, 2 * nb],
                         ("backward", "all_gather"): [2 + extra, (2 + extra) * shard],
                         ("backward", "reduce_scatter"): [2, 2 * nb]}
        assert synced == (6 * cfg.d_model * 8 if tp > 1 else 0)  # ln1, ln2 (weight, bias), proj.bias, fc2.bias
    tr = res.trace
    # a ring reduce-scatter of (b, s, d) + a ring all-gather of its shards = one ring all-reduce
    assert tr.bytes_sent(label="reduce_scatter") == 4 * (tp - 1) * nb
    assert tr.bytes_sent(label="all_gather") == (4 + extra) * (tp - 1) * nb
    assert tr.bytes_sent(label="all_reduce") == 2 * (tp - 1) * 6 * cfg.d_model * 8  # sync_grads only
    plain, _ = _run(cfg, tp, sp=False)
    act_bytes = plain.trace.bytes_sent()
    assert tr.bytes_sent(label="reduce_scatter") + tr.bytes_sent(label="all_gather") == act_bytes + \
        extra * (tp - 1) * nb


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
def test_activation_memory_per_rank(tp):
    """Measured bytes kept for backward equal the model: TP shards everything but the
    four (b, s, d) arrays around the norms; SP shards those too (Korthikanti 2022)."""
    cfg = _cfg()
    *_, single = _oracle(cfg)
    sbh, sb, sbf, as2b = S * B * cfg.d_model, S * B, S * B * cfg.d_ff, cfg.num_heads * S * S * B
    assert single == 8 * (8 * sbh + 2 * sbf + as2b + 4 * sb)  # nn.Block: 16 s b h + a s^2 b when d_ff = 4h
    tp_res, _ = _run(cfg, tp, sp=False)
    sp_res, _ = _run(cfg, tp, sp=True)
    hd = cfg.d_model // cfg.num_heads
    for r, (a_r, f_r) in enumerate(zip(shard_sizes(cfg.num_heads, tp), shard_sizes(cfg.d_ff, tp))):
        sharded = 4 * S * B * a_r * hd + 2 * S * B * f_r + a_r * S * S * B  # qkv, merged heads, fc1, gelu, P
        assert tp_res[r][3] == 8 * (4 * sbh + 4 * sb + sharded)  # two norm inputs, two norm outputs: whole
        assert sp_res[r][3] == 8 * ((4 * sbh + 4 * sb) // tp + sharded)  # ... split along the sequence
        if tp in (1, 2, 4):
            assert sp_res[r][3] == single // tp
    if tp > 1:
        assert sp_res[0][3] < tp_res[0][3]


def test_uneven_heads_and_rmsnorm_and_selective():
    cfg = _cfg(heads=3, d=12, d_ff=10, norm="rmsnorm", recompute="selective")  # 3 heads, 10 columns over 2
    res, (X, dY, Y, dX, P, G) = _run(cfg, 2, sp=False)
    _check_equal(res, 2, cfg, Y, dX, G)
    assert [r[2]["attn.qkv.weight"].shape[1] for r in res] == [2 * 3 * 4, 1 * 3 * 4]
    cfg = _cfg(heads=3, d=12, d_ff=10, norm="rmsnorm")
    res, (X, dY, Y, dX, P, G) = _run(cfg, 2, sp=True)
    _check_equal(res, 2, cfg, Y, dX, G)


def test_clear_errors():
    with pytest.raises(ValueError, match="num_heads=2 over 3"):
        ms.launch(lambda comm: TPBlock(comm, _cfg(heads=2)), 3)
    cfg = nn.GPTConfig(vocab_size=7, seq_len=10, d_model=12, num_heads=4, num_layers=1)
    with pytest.raises(ValueError, match="10 tokens cannot be split evenly over 4"):
        ms.launch(lambda comm: TPBlock(comm, cfg, sequence_parallel=True), 4)
    with pytest.raises(ValueError, match="recompute='full'"):
        ms.launch(lambda comm: TPBlock(comm, _cfg(recompute="full")), 2)
