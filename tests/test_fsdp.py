"""ZeRO-2 and ZeRO-3 / FSDP (fsdp.py) against data parallel + Adam: the trajectories to
1e-12 in float64 for p = 1..5 on an MLP of 66 parameters (no p > 1 divides a unit) and on
the GPT; the bytes of every rank on the wire from the trace equal the ring formulas
(ZeRO-2 = data parallel, ZeRO-3 = 1.5x); the measured peak memory per rank and kind
equals the ZeRO model plus the unit buffers in flight."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.data import split_batch
from mlscale.parallel import (FSDP, assemble, train_single, wire_bytes, zero_memory, zero_memory_by_kind)

SIZES = [5, 7, 3]  # 66 parameters in units of 42, 0 (the ReLU) and 24
STEPS, BATCH, LR = 3, 60, 0.02
TOL = dict(rtol=1e-12, atol=1e-14)


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((STEPS * BATCH, SIZES[0])), rng.integers(0, SIZES[-1], STEPS * BATCH)


def _adam(shard):
    return nn.Adam(shard, lr=LR, impl="reference")


def _dp(comm, X, y):
    model = nn.MLP(SIZES, dtype=np.float64, seed=0)
    opt = _adam(model.params)
    for t in range(STEPS):
        model.loss_and_grad(*split_batch((X[t * BATCH:(t + 1) * BATCH], y[t * BATCH:(t + 1) * BATCH]),
                                         comm.rank, comm.world_size))
        comm.all_reduce(model.grads, op="mean", algorithm="ring", out=model.grads)
        opt.step(model.grads)
    return model.params.copy()


def _fsdp(comm, X, y, stage, kw, micro=1):
    fsdp = FSDP(comm, nn.MLP(SIZES, dtype=np.float64, seed=0), _adam, stage=stage, **kw)
    for t in range(STEPS):
        xb, yb = split_batch((X[t * BATCH:(t + 1) * BATCH], y[t * BATCH:(t + 1) * BATCH]), comm.rank, comm.world_size)
        for k, (xm, ym) in enumerate(zip(np.array_split(xb, micro), np.array_split(yb, micro))):
            fsdp.loss_and_grad(xm, ym, zero_grad=(k == 0))
        if micro > 1:  # the mean over micro-batches of equal size
            for g in (fsdp.gshards if stage >= 2 else [fsdp.model.grads]):
                g *= 1.0 / micro
        fsdp.step()
    return fsdp.local_shards(), dict(fsdp.ledger.peak), [u.numel for u in fsdp.units]


VARIANTS = {"default": {}, "no_prefetch": dict(prefetch=False, overlap=False), "units2": dict(units=2)}


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_trajectory_bytes_and_memory_equal_the_model(p, stage):
    X, y = _data()
    dp = ms.launch(_dp, p, args=(X, y))
    n = dp[0].size
    for name, kw in VARIANTS.items():
        res = ms.launch(_fsdp, p, args=(X, y, stage, kw))
        np.testing.assert_allclose(assemble([r[0] for r in res], n), dp[0], **TOL, err_msg=name)
        units = res[0][2]
        assert sum(units) == n
        # bytes: every rank's, from the trace, equal the ring formula, unit by unit
        want = [STEPS * b for b in wire_bytes(units, p, stage, 8, per_rank=True)]
        assert res.trace.per_rank_bytes() == want, name
        dp_total = dp.trace.bytes_sent()
        assert dp_total == STEPS * 2 * (p - 1) * n * 8
        assert res.trace.bytes_sent() * 2 == dp_total * (3 if stage == 3 else 2), name
        if stage in (1, 2):
            rs = res.trace.bytes_sent(label="reduce_scatter")
            assert rs == res.trace.bytes_sent(label="all_gather") == dp_total // 2
        # memory: the measured peaks equal the exact model, rank by rank
        for rank, r in enumerate(res):
            model = zero_memory_by_kind(units, p, rank, stage, 8, prefetch=kw.get("prefetch", True),
                                        overlap=kw.get("overlap", True))
            assert r[1] == model, (name, rank)
        # ... and the ZeRO model of zero.py (float64 params and grads, Adam's m and v: k = 16)
        # once the unit buffers in flight are taken away, averaged over the ranks
        per_rank = [sum(r[1].values()) for r in res]
        in_flight = _in_flight(units, stage, kw)
        assert sum(per_rank) - p * in_flight == zero_memory(n, p, stage, k=16, param_bytes=8, grad_bytes=8) * p


def _in_flight(units, stage, kw):
    """Bytes of the unit buffers a rank holds at the peak beyond the ZeRO model."""
    def largest(two):
        pairs = [a + b for a, b in zip(units, units[1:])] if two else []
        return max(pairs + units) * 8
    params = largest(kw.get("prefetch", True)) if stage == 3 else 0
    grads = largest(kw.get("overlap", True)) if stage >= 2 else 0
    return params + grads


@pytest.mark.parametrize("stage", [2, 3])
def test_gradient_accumulation_into_the_shard(stage):
    X, y = _data()
    dp = ms.launch(_dp, 3, args=(X, y))
    res = ms.launch(_fsdp, 3, args=(X, y, stage, {}, 2))  # two micro-batches of 10 per rank
    np.testing.assert_allclose(assemble([r[0] for r in res], dp[0].size), dp[0], **TOL)
    # each micro-batch is reduce-scattered: twice the reduce-scatter bytes of one
    one = ms.launch(_fsdp, 3, args=(X, y, stage, {}, 1))
    assert res.trace.bytes_sent(label="reduce_scatter") == 2 * one.trace.bytes_sent(label="reduce_scatter")


CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)


def _gpt_batches(n=3, b=60, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)), rng.integers(0, CFG.vocab_size, (b, CFG.seq_len)))
            for _ in range(n)]


def _gpt(comm, stage, batches):
    fsdp = FSDP(comm, nn.GPT(CFG, seed=0, dtype=np.float64), lambda s: nn.Adam(s, lr=1e-2), stage=stage)
    losses = []
    for x, y in batches:
        losses.append(float(fsdp.loss_and_grad(*split_batch((x, y), comm.rank, comm.world_size))))
        fsdp.step()
    return fsdp.local_shards(), losses, [u.numel for u in fsdp.units], dict(fsdp.ledger.peak)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_gpt_zero2_zero3_equal_one_device(p):
    batches = _gpt_batches()
    losses, ref = train_single(CFG, batches, lr=1e-2)
    for stage in (2, 3):
        res = ms.launch(_gpt, p, args=(stage, batches))
        np.testing.assert_allclose(assemble([r[0] for r in res], ref.num_params), ref.params, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.mean([r[1] for r in res], axis=0), losses, rtol=1e-12)
        units = res[0][2]
        assert len(units) == CFG.num_layers + 3 and sum(units) == ref.num_params
        assert res.trace.per_rank_bytes() == [len(batches) * b for b in wire_bytes(units, p, stage, 8, per_rank=True)]
        for rank, r in enumerate(res):
            assert r[3] == zero_memory_by_kind(units, p, rank, stage, 8)


def test_errors():
    mlp = nn.MLP(SIZES, dtype=np.float64)
    with pytest.raises(ValueError, match="stage=4"):
        ms.launch(lambda c: FSDP(c, mlp, _adam, stage=4), 2)
    with pytest.raises(ValueError, match="cover the layers 0..2 once"):
        ms.launch(lambda c: FSDP(c, mlp, _adam, units=[[0], [2]]), 2)
    tied = nn.GPT(nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=1, tie_embeddings=True))
    with pytest.raises(ValueError, match="tie_embeddings=False"):
        ms.launch(lambda c: FSDP(c, tied, _adam), 2)
    with pytest.raises(TypeError, match="Sequential model"):
        ms.launch(lambda c: FSDP(c, object(), _adam), 2)
    with pytest.raises(TypeError, match="on the array it is given"):
        ms.launch(lambda c: FSDP(c, nn.MLP(SIZES, dtype=np.float64), lambda s: nn.Adam(s.copy())), 2)


def _tiny(comm, stage, X, y):
    if stage is None:  # the data-parallel oracle
        model = nn.MLP([1, 1, 2], dtype=np.float64)
        opt = nn.Adam(model.params, lr=0.1, impl="reference")
        for _ in range(2):
            model.loss_and_grad(*split_batch((X, y), comm.rank, comm.world_size))
            comm.all_reduce(model.grads, op="mean", algorithm="ring", out=model.grads)
            opt.step(model.grads)
        return model.params.copy()
    fsdp = FSDP(comm, nn.MLP([1, 1, 2], dtype=np.float64), lambda s: nn.Adam(s, lr=0.1, impl="reference"), stage=stage)
    for _ in range(2):
        fsdp.loss_and_grad(*split_batch((X, y), comm.rank, comm.world_size))
        fsdp.step()
    return fsdp.local_shards(), dict(fsdp.ledger.peak), [u.numel for u in fsdp.units], fsdp.full_params()


@pytest.mark.parametrize("p", [3, 5])
def test_units_smaller_than_the_world(p):
    # units of 2, 0 and 4 parameters: some ranks own an empty chunk of a unit
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 1)), rng.integers(0, 2, 60)
    ref = ms.launch(_tiny, p, args=(None, X, y))[0]
    for stage in range(4):
        res = ms.launch(_tiny, p, args=(stage, X, y))
        assert res[0][2] == [2, 0, 4]
        np.testing.assert_allclose(assemble([r[0] for r in res], 6), ref, **TOL)
        for rank, r in enumerate(res):
            np.testing.assert_array_equal(r[3], assemble([q[0] for q in res], 6))
            assert r[1] == zero_memory_by_kind([2, 0, 4], p, rank, stage, 8)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [1, 7, 12, 13])
def test_ring_bytes_per_rank_from_the_trace(p, n):
    # array_split chunks differ by one element when p does not divide n: rank r skips one
    # chunk per phase, so ranks send different bytes while the total stays (p-1) n per phase
    from mlscale.parallel import ring_bytes_per_rank

    for kind in ("reduce_scatter", "all_gather", "all_reduce"):
        def prog(comm):
            x = np.arange(n, dtype=np.float64)
            if kind == "all_gather":
                x = np.array_split(x, p)[comm.rank]
            return getattr(comm, kind)(x, algorithm="ring")
        res = ms.launch(prog, p)
        want = ring_bytes_per_rank(kind, n, p, 8)
        assert res.trace.per_rank_bytes() == want, kind
        assert sum(want) == (p - 1) * n * 8 * (2 if kind == "all_reduce" else 1)


def test_fsdp_on_a_mesh_dim():
    # ZeRO-3 over the dp dim of a (dp=2, tp=2) mesh: each tp column runs its own FSDP group
    from mlscale.parallel import Mesh

    X, y = _data()

    def prog(comm):
        mesh = Mesh(comm, {"dp": 2, "tp": 2})
        return _fsdp(mesh["dp"], X, y, 3, {})[0], mesh.coords

    res = ms.launch(prog, 4)
    ref = ms.launch(_dp, 2, args=(X, y))[0]
    for tp in (0, 1):
        group = [r[0] for r in res if r[1]["tp"] == tp]
        np.testing.assert_allclose(assemble(group, ref.size), ref, **TOL)
    assert res.trace.bytes_sent() == 2 * STEPS * wire_bytes([42, 0, 24], 2, 3, 8)
