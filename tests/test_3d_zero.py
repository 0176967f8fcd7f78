"""ZeRO-2 and ZeRO-3 on the dp dim of 3D training (three_d_zero.py): the trajectories
equal train_3d with zero=0 (plain all-reduce + Adam) and one device to 1e-12 in float64;
every rank's bytes on the dp dim (from the trace) equal the ring formulas (with one
micro-batch: stage 2 = stage 1 = data parallel, stage 3 = 1.5x); the measured peak
memory per rank and kind equals the ZeRO model with the rank's real chunk sizes."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import (dp_wire_bytes, global_losses, mesh_coords, shard_gpt_state, stage_params, train_3d,
                              train_single, zero_memory, zero_memory_by_kind)

TOL = dict(rtol=1e-12, atol=1e-12)
CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
LR, STEPS = 1e-2, 3


def _batches(b=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)), rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)))
            for _ in range(STEPS)]


BATCHES = _batches()


def _run(dims, zero, m=2, sp=False):
    dp, pp, tp = dims
    return ms.launch(train_3d, dp * pp * tp, args=(CFG, BATCHES, dp, pp, tp, m, LR, sp, zero))


def _dp_bytes(res, dims):
    """Bytes each rank sent on the dp dim: messages between ranks with the same pp and tp."""
    out = [0] * len(res)
    for msg in res.trace.messages:
        a, b = mesh_coords(msg.src, dims), mesh_coords(msg.dst, dims)
        if a[1:] == b[1:]:
            assert a[0] != b[0]
            out[msg.src] += msg.nbytes
    return out


@pytest.fixture(scope="module")
def single():
    losses, model = train_single(CFG, BATCHES, lr=LR)
    return losses, {k: v.copy() for k, v in model.named_params().items()}


def _check_memory(res, dims):
    dp = dims[0]
    for rank, r in enumerate(res):
        want = zero_memory_by_kind(r["units"], dp, r["coords"]["dp"], r["zero"], 8, prefetch=False, overlap=False)
        assert r["memory"] == want, (rank, r["zero"])
    # the paper's model (zero.py, float64 params and grads, Adam m and v: k = 16) once the one
    # unit in flight (stage 3 params, stages 2-3 grads) is taken away, summed over a dp group
    for pp_i in range(dims[1]):
        group = [r for r in res if r["coords"]["pp"] == pp_i and r["coords"]["tp"] == 0]
        units, z = group[0]["units"], group[0]["zero"]
        extra = (max(units) * 8) * ((z == 3) + (z >= 2))
        total = sum(sum(r["memory"].values()) for r in group) - dp * extra
        assert total == pytest.approx(zero_memory(sum(units), dp, z, k=16, param_bytes=8, grad_bytes=8) * dp,
                                      rel=1e-12)


@pytest.mark.parametrize("dims", [(2, 1, 1), (2, 2, 1), (2, 1, 2), (2, 2, 2), (3, 1, 1)])
def test_zero2_zero3_equal_all_reduce_adam(dims, single):
    dp, pp, tp = dims
    base = _run(dims, 0)
    want = stage_params(base)
    ref_losses, ref_params = single
    np.testing.assert_allclose(global_losses(base), ref_losses, **TOL)
    for rank, r in enumerate(base):  # zero=0 itself equals one device
        full = shard_gpt_state(ref_params, CFG, tp, r["coords"]["tp"])
        for name, v in want[rank].items():
            np.testing.assert_allclose(v, full[name], **TOL, err_msg=f"zero=0 rank {rank} {name}")
    for zero in (2, 3):
        res = _run(dims, zero)
        np.testing.assert_allclose(global_losses(res), global_losses(base), **TOL)
        got = stage_params(res)
        for rank in range(len(res)):
            assert got[rank].keys() == want[rank].keys() and got[rank]
            for name, v in got[rank].items():
                np.testing.assert_allclose(v, want[rank][name], **TOL, err_msg=f"zero={zero} rank {rank} {name}")
        # bytes on the dp dim, rank by rank, 2 micro-batches: stage 2 = 2 rs + 1 ag, stage 3 = 2 (2 ag + rs)
        for rank, (r, sent) in enumerate(zip(res, _dp_bytes(res, dims))):
            assert sent == STEPS * dp_wire_bytes(r["units"], dp, zero, 2)[r["coords"]["dp"]], (zero, rank)
        _check_memory(res, dims)
    _check_memory(base, dims)
    if dp % 2 == 1:  # 3 ranks: the stage's 7072 elements and most units do not divide
        assert any(n % dp for n in res[0]["units"])


@pytest.mark.parametrize("dims", [(2, 2, 1), (3, 1, 1)])
def test_one_microbatch_bytes_stage2_equal_stage1_and_stage3_is_one_and_a_half(dims):
    dp = dims[0]
    tot = {}
    for zero in (0, 1, 2, 3):
        res = _run(dims, zero, m=1)
        sent = _dp_bytes(res, dims)
        for rank, r in enumerate(res):
            assert sent[rank] == STEPS * dp_wire_bytes(r["units"], dp, zero, 1)[r["coords"]["dp"]], (zero, rank)
        tot[zero] = sum(sent)
        _check_memory(res, dims)
    n = sum(sum(r["units"]) for r in res if r["coords"]["dp"] == 0)  # every stage's elements
    assert tot[0] == tot[1] == tot[2] == STEPS * 2 * (dp - 1) * n * 8
    assert 2 * tot[3] == 3 * tot[0]


@pytest.mark.parametrize("dims", [(2, 1, 2), (2, 2, 2)])
def test_zero3_with_sequence_parallel(dims, single):
    """SP's partial grads (norms, row-parallel biases) are summed over tp per micro-batch,
    before the dp reduce-scatter."""
    base = _run(dims, 0, sp=True)
    res = _run(dims, 3, sp=True)
    np.testing.assert_allclose(global_losses(res), single[0], **TOL)
    got, want = stage_params(res), stage_params(base)
    for rank in range(len(res)):
        full = shard_gpt_state(single[1], CFG, dims[2], res[rank]["coords"]["tp"], True)
        for name, v in got[rank].items():
            np.testing.assert_allclose(v, want[rank][name], **TOL)
            np.testing.assert_allclose(v, full[name], **TOL)


def test_zero_true_false_mean_one_and_zero_and_bad_values_are_named():
    r1 = ms.launch(train_3d, 2, args=(CFG, BATCHES[:1], 2, 1, 1, 1, LR, False, True))
    r0 = ms.launch(train_3d, 2, args=(CFG, BATCHES[:1], 2, 1, 1, 1, LR, False, False))
    assert r1[0]["zero"] == 1 and r0[0]["zero"] == 0
    for bad in (4, -1, "3", 2.0):
        with pytest.raises(ValueError, match=r"zero=.*use 0 \(plain all-reduce\), 1 \(ZeRO-1\), 2 \(ZeRO-2\)"):
            ms.launch(train_3d, 2, args=(CFG, BATCHES[:1], 2, 1, 1, 1, LR, False, bad))


def test_zero3_layers_hold_no_parameters_between_uses():
    """Stage 3 frees every gathered unit: after a step no layer of my stage is bound, and
    the live parameter bytes are my shards only."""
    from mlscale.parallel import PipelineParallel, ShardedStage, tp_gpt

    def prog(comm):
        model = tp_gpt(comm.split(comm.rank), CFG)  # tp = 1
        pipe = PipelineParallel(comm.split(comm.rank), model, 1)  # pp = 1
        st = ShardedStage(model, 0, 1, comm, 3, lambda s: nn.Adam(s, lr=LR))
        pipe.stage = st
        st.zero_grad()
        pipe.step(BATCHES[0][0][:3 * comm.rank + 3][-3:], BATCHES[0][1][:3 * comm.rank + 3][-3:])
        st.step()
        bound = [type(layer).__name__ for layer in st.layers if getattr(layer, "params", None)]
        mine = sum(u.hi - u.lo for u in st.units) * 8
        return bound, st.ledger.live["params"] == mine, st.ledger.live["grads"] == mine

    for bound, params_ok, grads_ok in ms.launch(prog, 2):
        assert bound == [] and params_ok and grads_ok


def test_zero3_under_gpipe_equals_1f1b():
    """The schedule only reorders the micro-batches: GPipe under ZeRO-3 gives the same
    trajectory and the same dp bytes as 1F1B."""
    dims = (2, 2, 1)
    runs = [ms.launch(lambda comm, s: train_3d(comm, CFG, BATCHES, 2, 2, 1, 2, LR, False, 3, schedule=s), 4,
                      args=(s,)) for s in ("1f1b", "gpipe")]
    np.testing.assert_allclose(global_losses(runs[0]), global_losses(runs[1]), **TOL)
    a, b = (stage_params(r) for r in runs)
    for rank in range(4):
        for name in a[rank]:
            np.testing.assert_allclose(a[rank][name], b[rank][name], **TOL)
    assert _dp_bytes(runs[0], dims) == _dp_bytes(runs[1], dims)
