"""Mixed precision in FSDP (fsdp_precision.py): float32 compute over float64 master shards
stays within 1e-6 of the float64 run (and is not it: the compute really is float32); one
rank equals a hand-written master-weights loop to 1e-12; the all-gathers carry half the
bytes (from the trace, = the ring formula at 4 bytes); the ledger shows the master
shards and the low-precision units (= mp_memory_by_kind); float16 with a loss scale that
overflows: the steps are skipped on every rank, counted, the scale halved, the shards
untouched."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.data import split_batch
from mlscale.nn.precision import LossScaler
from mlscale.parallel import FSDP, assemble, ring_bytes_per_rank
from mlscale.parallel.fsdp_precision import MixedPrecisionPolicy, found_inf, mp_memory_by_kind

SIZES = [5, 7, 3]  # 66 parameters in units of 42, 0 and 24
STEPS, BATCH, LR = 4, 60, 0.02
#: float32 compute over float64 masters after STEPS Adam steps: measured 3e-8 (params) and
#: 1.3e-7 (losses) for p = 1..5; the stated tolerance leaves a margin of about 10x
FP32_TOL = dict(rtol=0, atol=1e-6)
#: float16 compute over float32 masters against a float32 model: measured 2.2e-4
FP16_TOL = dict(rtol=0, atol=2e-3)


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((STEPS * BATCH, SIZES[0])), rng.integers(0, SIZES[-1], STEPS * BATCH)


X, Y = _data()


def _adam(shard):
    return nn.Adam(shard, lr=LR, impl="reference")


def _sgd(shard):  # not scale-invariant as Adam nearly is: shows that the gradients are unscaled
    return nn.SGD(shard, lr=0.1, impl="reference")


def _run(comm, stage, policy, dtype, kw=None, snapshot=False, first=0, make_optimizer=_adam):
    fsdp = FSDP(comm, nn.MLP(SIZES, dtype=dtype, seed=0), make_optimizer, stage=stage, mixed_precision=policy,
                **(kw or {}))
    losses, shards = [], []
    for t in range(first, STEPS):
        batch = (X[t * BATCH:(t + 1) * BATCH], Y[t * BATCH:(t + 1) * BATCH])
        losses.append(float(fsdp.loss_and_grad(*split_batch(batch, comm.rank, comm.world_size))))
        fsdp.step()
        if snapshot:
            shards.append(fsdp.local_shards())
    history = None if fsdp.scaler is None else list(fsdp.scaler.history)
    return {"shards": fsdp.local_shards(), "losses": losses, "peak": dict(fsdp.ledger.peak),
            "units": [u.numel for u in fsdp.units], "skipped": fsdp.skipped_steps, "history": history,
            "snapshots": shards, "dtype": fsdp.local_shards()[0][1].dtype}


def _params(res):
    return assemble([r["shards"] for r in res], sum(res[0]["units"]))


@pytest.mark.parametrize("p", [1, 2, 3, 5])
@pytest.mark.parametrize("stage", [2, 3])
def test_float32_compute_over_float64_masters(p, stage):
    ref = ms.launch(_run, p, args=(stage, None, np.float64))
    kw = {} if stage == 2 else dict(prefetch=False, overlap=False)
    for reduce in (None, np.float64):
        res = ms.launch(_run, p, args=(stage, MixedPrecisionPolicy(np.float32, reduce), np.float64, kw))
        assert res[0]["dtype"] == np.float64  # the master shards
        diff = np.abs(_params(res) - _params(ref)).max()
        assert 1e-10 < diff < FP32_TOL["atol"]  # close, and really computed in float32
        np.testing.assert_allclose(np.mean([r["losses"] for r in res], 0), np.mean([r["losses"] for r in ref], 0),
                                   **FP32_TOL)
        # bytes: the all-gathers carry float32 (half of float64's), exactly the ring formula at 4 B
        ag, ag_ref = res.trace.per_rank_bytes("all_gather"), ref.trace.per_rank_bytes("all_gather")
        assert sum(ag) * 2 == sum(ag_ref) and (sum(ag_ref) > 0) == (p > 1)
        gathers = STEPS * (2 if stage == 3 else 1)
        want = [gathers * sum(b) for b in zip(*[ring_bytes_per_rank("all_gather", n, p, 4)
                                                for n in res[0]["units"] if n])]
        assert ag == (want if p > 1 else [0])
        rs, rs_ref = res.trace.bytes_sent(label="reduce_scatter"), ref.trace.bytes_sent(label="reduce_scatter")
        assert rs * (2 if reduce is None else 1) == rs_ref  # reduce_dtype float32 halves them too
        assert (rs_ref > 0) == (p > 1)
        # memory: master float64 shards + Adam (float64), float32 gathered units and unit grads
        for rank, r in enumerate(res):
            want_mem = mp_memory_by_kind(r["units"], p, rank, stage, 4, 8, **{"prefetch": True, "overlap": True,
                                                                                **kw})
            assert r["peak"] == want_mem, rank
            assert r["peak"]["master"] == sum(n for _, c in r["shards"] for n in [c.size]) * 8


def _master_loop():
    """The oracle on one device: float32 model, float64 master weights and Adam."""
    model = nn.MLP(SIZES, dtype=np.float64, seed=0)
    master = model.params.copy()
    low = model.astype(np.float32)
    opt = _adam(master)
    for t in range(STEPS):
        low.params[...] = master.astype(np.float32)
        low.zero_grad()
        low.loss_and_grad(X[t * BATCH:(t + 1) * BATCH], Y[t * BATCH:(t + 1) * BATCH])
        opt.step(low.grads.astype(np.float64))
    return master


@pytest.mark.parametrize("stage", [2, 3])
def test_one_rank_equals_the_master_weights_loop(stage):
    res = ms.launch(_run, 1, args=(stage, MixedPrecisionPolicy(np.float32), np.float64))
    np.testing.assert_allclose(_params(res), _master_loop(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt", [_adam, _sgd])
@pytest.mark.parametrize("stage", [2, 3])
def test_float16_with_loss_scaling_close_to_float32(stage, opt):
    ref = ms.launch(_run, 3, args=(stage, None, np.float32, None, False, 0, opt))
    res = ms.launch(_run, 3, args=(stage, MixedPrecisionPolicy(np.float16, np.float32), np.float32, None, False, 0,
                                   opt))
    assert res[0]["skipped"] == 0 and res[0]["history"][0] == (2.0 ** 16, False)  # the default LossScaler
    np.testing.assert_allclose(_params(res), _params(ref), **FP16_TOL)
    assert res.trace.bytes_sent(label="all_gather") * 2 == ref.trace.bytes_sent(label="all_gather")  # 2 B instead of 4
    for rank, r in enumerate(res):
        want = mp_memory_by_kind(r["units"], 3, rank, stage, 2, 4)
        if opt is _sgd:  # no optimizer state
            want["optimizer"] = 0
        assert r["peak"] == want


def test_overflow_is_skipped_on_every_rank_and_the_scale_halved():
    scaler = LossScaler(init_scale=2.0 ** 20, growth_interval=1000)  # dlogits * 2^20 > 65504: inf
    res = ms.launch(_run, 2, args=(3, MixedPrecisionPolicy(np.float16, np.float32, scaler), np.float32, None, True))
    hist = res[0]["history"]
    assert all(r["history"] == hist for r in res)  # every rank agreed (found_inf is all-reduced)
    assert scaler.history == []  # FSDP scaled with its own copy
    skipped = [s for _, s in hist]
    assert skipped == [True, True, False, False] and res[0]["skipped"] == 2  # 2^20, 2^19 overflow; 2^18 fits
    assert [a for a, _ in hist] == [2.0 ** 20, 2.0 ** 19, 2.0 ** 18, 2.0 ** 18]  # halved after each overflow
    start = nn.MLP(SIZES, dtype=np.float32, seed=0).params
    for r in res:  # a skipped step leaves the master shards as they were; a good one moves them
        before = [(s, start[s:s + c.size]) for s, c in r["shards"]]
        for t, snap in enumerate(r["snapshots"]):
            for (s, c), (_, b) in zip(snap, before):
                if skipped[t]:
                    np.testing.assert_array_equal(c, b)
                elif c.size:
                    assert np.abs(c - b).max() > 1e-4
            before = snap
    # the skipped steps did not count for Adam: = float32 training on the last two batches
    ref = ms.launch(_run, 2, args=(3, None, np.float32, None, False, 2))
    np.testing.assert_allclose(_params(res), _params(ref), **FP16_TOL)


def test_an_overflow_in_one_rank_s_shard_skips_the_step_on_all():
    """An inf in rank 1's gradient shard only (as when it lands in one chunk): every rank
    must skip the step, or the replicas' shards would part ways."""
    def prog(comm):
        fsdp = FSDP(comm, nn.MLP(SIZES, dtype=np.float32, seed=0), _adam, stage=3,
                    mixed_precision=MixedPrecisionPolicy(np.float16, np.float32))
        for t in range(2):
            fsdp.loss_and_grad(*split_batch((X[t * BATCH:(t + 1) * BATCH], Y[t * BATCH:(t + 1) * BATCH]), comm.rank, 2))
            if t == 0 and comm.rank == 1:
                fsdp.gshards[0][0] = np.inf
            fsdp.step()
        return fsdp.scaler.history, fsdp.skipped_steps

    res = ms.launch(prog, 2)
    assert res[0] == res[1] == ([(2.0 ** 16, True), (2.0 ** 15, False)], 1)


def test_found_inf_from_one_rank_reaches_all():
    def prog(comm):
        g = np.zeros(3, np.float32)
        if comm.rank == 2:
            g[1] = np.inf
        return found_inf(comm, [g]), found_inf(comm, [np.zeros(3, np.float32)])

    assert ms.launch(prog, 3) == [(True, False)] * 3


def test_gpt_stage3_float32_over_float64():
    cfg = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 11, (6, 8)), rng.integers(0, 11, (6, 8))) for _ in range(3)]

    def prog(comm, policy):
        fsdp = FSDP(comm, nn.GPT(cfg, seed=0, dtype=np.float64), lambda s: nn.Adam(s, lr=1e-2), stage=3,
                    mixed_precision=policy)
        for x, y in batches:
            fsdp.loss_and_grad(*split_batch((x, y), comm.rank, comm.world_size))
            fsdp.step()
        return fsdp.full_params()

    ref = ms.launch(prog, 2, args=(None,))
    res = ms.launch(prog, 2, args=(MixedPrecisionPolicy(np.float32),))
    assert 1e-10 < np.abs(res[0] - ref[0]).max() < 1e-5
    np.testing.assert_array_equal(res[0], res[1])


def test_bad_policies_are_named():
    model = nn.MLP(SIZES, dtype=np.float32, seed=0)

    def make(stage, policy):
        return ms.launch(lambda comm: FSDP(comm, model.copy(), _adam, stage=stage, mixed_precision=policy) and 0, 1)

    with pytest.raises(ValueError, match="needs stage 2 or 3"):
        make(1, MixedPrecisionPolicy(np.float16))
    with pytest.raises(ValueError, match="NumPy has no bfloat16"):
        make(3, MixedPrecisionPolicy("bfloat16"))
    with pytest.raises(ValueError, match="wider than the model's"):
        make(3, MixedPrecisionPolicy(np.float64))
    with pytest.raises(ValueError, match="is not a float dtype"):
        make(3, MixedPrecisionPolicy(np.int16))
    with pytest.raises(TypeError, match="MixedPrecisionPolicy"):
        make(3, "float16")
