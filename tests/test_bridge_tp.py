"""The tensor-parallel bridge (mlscale.bridge_tp): mlscale's Megatron MLP (ParallelMLP on
Mesh["tp"]) equals a single-device nn.MLP trained on the whole batch (to 1e-12, on the
simulator: runs everywhere), and equals torch's parallelize_module(ColwiseParallel,
RowwiseParallel) on the same gloo processes within bridge.TOLERANCE (1e-10 relative):
losses, gathered parameters, and each rank's shards; on tp = 2 and on a 2 x 2 dp x tp mesh
(FSDP2 over dp on torch's side). The torch tests skip without torch or mpiexec."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import bridge, bridge_tp
from mlscale import bridge_attention as ba
from mlscale.nn.optim import SGD, Adam
from mlscale.parallel.tp_comm import shard_range

X, Y = bridge_tp.tp_data(n=64)
XA, YA = ba.attention_data(n=32)
C = bridge_tp.TP_DEFAULTS
MESHES = {2: {"dp": 1, "tp": 2}, 4: {"dp": 2, "tp": 2}}


def single_device(optimizer):
    """The oracle: nn.MLP([d, h, d], "gelu") on the WHOLE global batch, float64."""
    model = bridge_tp._full_model(dict(C))
    opt = (SGD(model, lr=C["sgd_lr"], momentum=C["momentum"]) if optimizer == "sgd"
           else Adam(model, lr=C["adam_lr"]))
    from mlscale.train.loop import _global_batches

    stream, losses = _global_batches(X, Y, C["batch_size"], C["seed"]), []
    for _ in range(C["steps"]):
        xb, yb = next(stream)
        model.zero_grad()
        z = model.forward(xb)
        model.backward(2.0 * (z - yb) / z.size)  # d/dz of mean((z - y)^2), written out here
        loss = float(np.mean((z - yb) ** 2))
        opt.step()
        losses.append(loss)
    return losses, model


def expected_shards(model, tp_size, tp_rank):
    """Rank tp_rank's shards of the single-device block, in mlscale's (in, out) layout."""
    p = model.named_params()
    lo, hi = shard_range(C["d_hidden"], tp_size, tp_rank)
    return {"fc1.weight": p["0.weight"][:, lo:hi], "fc1.bias": p["0.bias"][lo:hi],
            "fc2.weight": p["2.weight"][lo:hi], "fc2.bias": p["2.bias"]}


@pytest.mark.parametrize("optimizer", bridge_tp.TP_OPTIMIZERS)
@pytest.mark.parametrize("p, sizes", [(2, {"dp": 1, "tp": 2}), (4, {"dp": 2, "tp": 2}), (4, {"dp": 1, "tp": 4}),
                                      (1, {"dp": 1, "tp": 1})])
def test_mlscale_tp_equals_single_device(p, sizes, optimizer):
    want_losses, model = single_device(optimizer)
    res = ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, sizes, optimizer=optimizer), p)
    t = sizes["tp"]
    for r, out in enumerate(res):
        np.testing.assert_allclose(out["params"], model.params, rtol=0, atol=1e-12)
        for k, v in expected_shards(model, t, r % t).items():
            np.testing.assert_allclose(out["shards"][k], v, rtol=0, atol=1e-12, err_msg=k)
    # the dp groups' slice losses average to the whole batch's loss
    by_dp = [res[i * t]["losses"] for i in range(sizes["dp"])]
    np.testing.assert_allclose(np.mean(by_dp, axis=0), want_losses, rtol=1e-12)
    assert bridge.rel_diff(model.params, bridge_tp._full_model(dict(C)).params) > 1e-3  # it moved


def test_tp_ranks_hold_different_columns_dp_ranks_the_same():
    res = ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, {"dp": 2, "tp": 2}), 4)
    for k in bridge_tp.TP_NAMES:
        assert np.array_equal(res[0]["shards"][k], res[2]["shards"][k])  # same tp coordinate
        assert np.array_equal(res[1]["shards"][k], res[3]["shards"][k])
    assert not np.array_equal(res[0]["shards"]["fc1.weight"], res[1]["shards"]["fc1.weight"])
    assert res[0]["shards"]["fc1.weight"].shape == (C["d_model"], C["d_hidden"] // 2)
    assert res[0]["shards"]["fc2.weight"].shape == (C["d_hidden"] // 2, C["d_model"])
    assert np.array_equal(res[0]["shards"]["fc2.bias"], res[1]["shards"]["fc2.bias"])  # replicated


def test_shard_rules_and_bad_inputs():
    assert bridge_tp.torch_chunk_sizes(10, 4) == [3, 3, 3, 1]
    assert bridge_tp.torch_chunk_sizes(3, 4) == [1, 1, 1, 0]
    assert bridge_tp.torch_chunk_sizes(5, 2) == [3, 2]
    with pytest.raises(ValueError, match=r"d_hidden=10 over tp=4.*\[3, 3, 2, 2\].*\[3, 3, 3, 1\].*divisible by 4"):
        ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, d_hidden=10), 4)
    with pytest.raises(ValueError, match="optimizer='lamb'"):
        ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, optimizer="lamb"), 1)
    with pytest.raises(TypeError, match=r"unknown settings \['lr'\]"):
        ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, lr=0.1), 1)
    with pytest.raises(ValueError, match="dp slowest"):
        ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, {"tp": 2, "dp": 1}), 2)
    with pytest.raises(ValueError, match="world_size=2"):
        ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, {"dp": 2, "tp": 2}), 2)
    with pytest.raises(TypeError, match="backend='torch'"):
        ms.launch(lambda c: bridge_tp.tp_train_torch(c, X, Y), 2)


# ---------------------------------------------------------------- against torch (real processes)
def _need_torch():
    pytest.importorskip("torch", reason='the bridge needs PyTorch: pip install "mlscale[torch]"')
    from _mpi_batch import require_mpi

    require_mpi()


@pytest.fixture(scope="module")
def launches():
    """TWO launches in all (each start costs seconds): 2 ranks (tp = 2, and the attention
    with SGD and Adam), and 4 ranks (dp x tp = 2 x 2)."""
    _need_torch()
    return {p: ms.launch(_side_by_side, p, args=(X, Y, MESHES[p]), backend="torch", timeout=180) for p in MESHES}


@pytest.fixture(scope="module")
def runs(launches):
    return {p: [r["tp"] for r in res] for p, res in launches.items()}


def _side_by_side(comm, X, Y, sizes):
    out = {"tp": bridge_tp.tp_side_by_side(comm, X, Y, sizes)}
    if comm.world_size == 2:
        out["attention"] = {o: ba.attention_side_by_side(comm, XA, YA, optimizer=o) for o in ("sgd", "adam")}
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("p", sorted(MESHES))
def test_mlscale_equals_torch_tp(runs, p):
    res = runs[p]
    assert len(res) == p
    for o, d in bridge_tp.tp_compare(res).items():
        assert d["losses"] < bridge.TOLERANCE and d["params"] < bridge.TOLERANCE and d["shards"] < bridge.TOLERANCE, \
            (p, o, d)
    for o in bridge_tp.TP_OPTIMIZERS:
        want_losses, model = single_device(o)  # and both equal the single-device oracle
        for r, out in enumerate(res):
            assert len(out[o]["torch"]["losses"]) == C["steps"]
            assert bridge.rel_diff(out[o]["torch"]["params"], model.params) < bridge.TOLERANCE
            for k, v in expected_shards(model, MESHES[p]["tp"], r % MESHES[p]["tp"]).items():
                assert out[o]["torch"]["shards"][k].shape == v.shape, k
                assert bridge.rel_diff(out[o]["torch"]["shards"][k], v) < bridge.TOLERANCE, (p, o, r, k)


@pytest.mark.mpi
def test_torch_placements_are_colwise_and_rowwise(runs):
    h, d = C["d_hidden"], C["d_model"]
    for out in runs[2]:
        pl = out["adam"]["torch"]["placements"]
        assert pl == {"0.weight": (("Shard(dim=0)",), (h // 2, d)), "0.bias": (("Shard(dim=0)",), (h // 2,)),
                      "2.weight": (("Shard(dim=1)",), (d, h // 2)), "2.bias": (("Replicate()",), (d,))}
    for out in runs[4]:  # FSDP2 shards dim 0 again over dp, on top of tp
        pl = out["adam"]["torch"]["placements"]
        assert pl["0.weight"][0][1] == "Shard(dim=0)" and pl["2.weight"][0] == ("Shard(dim=0)", "Shard(dim=1)")
        assert pl["2.bias"][0] == ("Shard(dim=0)", "Replicate()")


@pytest.mark.mpi
def test_mlscale_side_on_torch_engine_equals_the_simulator(runs):
    for p, sizes in MESHES.items():
        sim = ms.launch(lambda c: bridge_tp.tp_train_mlscale(c, X, Y, sizes, optimizer="adam"), p)
        for r in range(p):
            got = runs[p][r]["adam"]["mlscale"]
            assert got["losses"] == sim[r]["losses"] and np.array_equal(got["params"], sim[r]["params"])


# ---------------------------------------------------------------- attention heads over tp


def single_device_attention():
    """The oracle: the single-device CausalSelfAttention on the whole batch, SGD."""
    c = dict(ba.ATTN_DEFAULTS)
    model = ba.full_attention(c)
    opt = SGD(model, lr=c["sgd_lr"], momentum=c["momentum"])
    from mlscale.train.loop import _global_batches

    stream, losses = _global_batches(XA, YA, c["batch_size"], c["seed"]), []
    for _ in range(c["steps"]):
        xb, yb = next(stream)
        model.zero_grad()
        z = model.forward(xb)
        model.backward(2.0 * (z - yb) / z.size)
        losses.append(float(np.mean((z - yb) ** 2)))
        opt.step()
    return losses, model


@pytest.mark.parametrize("p", [1, 2, 4])
def test_mlscale_tp_attention_equals_single_device(p):
    want, model = single_device_attention()
    res = ms.launch(lambda c: ba.attention_train_mlscale(c, XA, YA), p)
    d, h = ba.ATTN_DEFAULTS["d_model"], ba.ATTN_DEFAULTS["num_heads"]
    full = model.named_params()
    for r, out in enumerate(res):
        np.testing.assert_allclose(out["losses"], want, rtol=1e-12)
        np.testing.assert_allclose(out["params"], model.params, rtol=0, atol=1e-12)
        cols = np.arange(r * d // p, (r + 1) * d // p)  # my heads' dims, in each of Q, K, V
        qkv_cols = np.concatenate([cols, d + cols, 2 * d + cols])
        np.testing.assert_allclose(out["shards"]["qkv.weight"], full["0.qkv.weight"][:, qkv_cols], atol=1e-12)
        np.testing.assert_allclose(out["shards"]["proj.weight"], full["0.proj.weight"][cols], atol=1e-12)
    assert want[-1] < 0.6 * want[0]  # it trains
    assert h % p == 0


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match="num_heads=4 over tp=3"):
        ms.launch(lambda c: ba.attention_train_mlscale(c, XA, YA), 3)
    with pytest.raises(TypeError, match=r"unknown settings \['heads'\]"):
        ms.launch(lambda c: ba.attention_train_mlscale(c, XA, YA, heads=2), 1)
    with pytest.raises(TypeError, match="backend='torch'"):
        ms.launch(lambda c: ba.attention_train_torch(c, XA, YA), 2)


@pytest.fixture(scope="module")
def attention_run(launches):
    both = [r["attention"] for r in launches[2]]
    return [b["sgd"] for b in both], [b["adam"] for b in both]


@pytest.mark.mpi
def test_mlscale_attention_equals_torch_colwise_q_k_v_rowwise_o(attention_run):
    attention_run = attention_run[0]  # SGD
    d = ba.attention_compare(attention_run)
    assert max(d.values()) < bridge.TOLERANCE, d
    want, model = single_device_attention()
    e, dm = ba.ATTN_DEFAULTS["d_model"] // 2, ba.ATTN_DEFAULTS["d_model"]
    for r, out in enumerate(attention_run):
        assert bridge.rel_diff(out["torch"]["params"], model.params) < bridge.TOLERANCE
        pl = out["torch"]["placements"]
        assert pl["q.weight"] == pl["k.weight"] == pl["v.weight"] == (("Shard(dim=0)",), (e, dm))
        assert pl["o.weight"] == (("Shard(dim=1)",), (dm, e)) and pl["o.bias"] == (("Replicate()",), (dm,))
        got = ms.launch(lambda c: ba.attention_train_mlscale(c, XA, YA), 2)[r]  # the simulator, to the bit
        assert got["losses"] == out["mlscale"]["losses"] and np.array_equal(got["params"], out["mlscale"]["params"])


@pytest.mark.mpi
def test_adam_differs_only_in_the_key_bias(attention_run):
    """The key bias's gradient is zero (softmax ignores a constant per row): Adam amplifies
    each library's rounding noise there, and only there."""
    d = ba.ATTN_DEFAULTS["d_model"] // 2  # my dims per third on 2 ranks
    for out in attention_run[1]:
        m, t = out["mlscale"]["shards"], out["torch"]["shards"]
        for k in m:
            if k != "qkv.bias":
                assert bridge.rel_diff(m[k], t[k]) < bridge.TOLERANCE, k
        q, kb, v = np.split(m["qkv.bias"], 3), np.split(t["qkv.bias"], 3)[1], np.split(t["qkv.bias"], 3)
        assert bridge.rel_diff(q[0], v[0]) < bridge.TOLERANCE and bridge.rel_diff(q[2], v[2]) < bridge.TOLERANCE
        assert np.max(np.abs(q[1] - kb)) < 1e-8 and q[1].shape == (d,)  # noise-sized steps, never large ones


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mlscale.bridge_tp, mlscale.bridge_attention; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
