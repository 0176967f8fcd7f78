"""The sequence-parallel bridge (mlscale.bridge_sp): mlscale's Megatron SP block (LayerNorm
on my tokens, TPFeedForward(sequence_parallel=True) on Mesh["tp"]) equals a single-device
float64 block trained on whole sequences (to 1e-12, on the simulator: runs everywhere), with
the bytes of its trace equal to the ring formula; and equals torch's parallelize_module with
SequenceParallel / ColwiseParallel(input_layouts=Shard(1)) / RowwiseParallel(output_layouts=
Shard(1)) on the same gloo processes within bridge.TOLERANCE: losses, gathered parameters,
each rank's shards and output activations, the same contiguous sequence blocks per rank, the
collectives torch's CommDebugMode counts. The torch tests (one launch) skip without torch."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import bridge
from mlscale import bridge_sp as bs
from mlscale.nn.optim import SGD
from mlscale.parallel.tp_attention import shard_block_state

X, Y = bs.sp_data(n=32, seq_len=8)
C = bs.SP_DEFAULTS
B, S, D, H = C["batch_size"], X.shape[1], C["d_model"], C["d_hidden"]


def single_device():
    """The oracle: the single-device block on WHOLE sequences, SGD; and its first outputs."""
    model = bs.full_block(dict(C))
    opt = SGD(model, lr=C["sgd_lr"], momentum=C["momentum"])
    from mlscale.train.loop import _global_batches

    stream, losses, first = _global_batches(X, Y, B, C["seed"]), [], None
    for _ in range(C["steps"]):
        xb, yb = next(stream)
        model.zero_grad()
        z = model.forward(xb)
        model.backward(2.0 * (z - yb) / z.size)
        losses.append(float(np.mean((z - yb) ** 2)))
        opt.step()
        first = (xb, z) if first is None else first
    return losses, model, first


def numpy_block(p, x):
    """``x + GELU(LN(x) W1 + b1) W2 + b2`` written out in NumPy (LayerNorm eps 1e-5, GELU tanh)."""
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    n = (x - mu) / np.sqrt(var + 1e-5) * p["0.ln.weight"] + p["0.ln.bias"]
    u = n @ p["0.mlp.fc1.weight"] + p["0.mlp.fc1.bias"]
    g = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    return x + g @ p["0.mlp.fc2.weight"] + p["0.mlp.fc2.bias"]


def expected_shards(model, t, r):
    cfg = type("cfg", (), dict(d_model=D, num_heads=1, d_ff=H))
    return shard_block_state({k[2:]: v for k, v in model.named_params().items()}, cfg, t, r)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_mlscale_sp_equals_single_device(p):
    want, model, (x0, z0) = single_device()
    np.testing.assert_allclose(z0, numpy_block(bs.full_block(dict(C)).named_params(), x0), rtol=0, atol=1e-12)
    res = ms.launch(lambda c: bs.sp_train_mlscale(c, X, Y), p)
    for r, out in enumerate(res):
        lo, hi = r * S // p, (r + 1) * S // p  # contiguous blocks of the sequence, in rank order
        assert out["positions"] == list(range(lo, hi))
        np.testing.assert_allclose(out["activation"], z0[:, lo:hi], rtol=0, atol=1e-12)
        np.testing.assert_allclose(out["losses"], want, rtol=1e-12)
        np.testing.assert_allclose(out["params"], model.params, rtol=0, atol=1e-12)
        for k, v in expected_shards(model, p, r).items():
            assert out["shards"][k].shape == v.shape, k
            np.testing.assert_allclose(out["shards"][k], v, rtol=0, atol=1e-12, err_msg=k)
    assert want[-1] < 0.5 * want[0] and all(b < a for a, b in zip(want, want[1:]))  # it trains


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("regather", [False, True])
def test_trace_bytes_equal_the_ring_formula(p, regather):
    res = ms.launch(lambda c: bs.sp_train_mlscale(c, X, Y, regather=regather), p)
    per_step = bs.sp_step_bytes(p, B, S, D, 8, regather)
    steps, n = C["steps"], B * S * D * 8
    gather_params = (p - 1) * (2 * D * H + H) * 8  # the final all-gathers of fc1.weight, fc1.bias, fc2.weight
    tr = res.trace
    assert set(tr.labels()) == {"all_gather/ring", "reduce_scatter/ring", "all_reduce/ring"}
    assert tr.bytes_sent(label="reduce_scatter") == steps * per_step["reduce_scatter"] == steps * 2 * (p - 1) * n
    assert tr.bytes_sent(label="all_gather") == steps * per_step["all_gather"] + gather_params
    assert tr.bytes_sent(label="all_reduce") == steps * per_step["all_reduce"]
    # plain TP's two all-reduces of (b, s, d) per step move what SP's all-gathers + reduce-scatters move
    assert per_step["reduce_scatter"] + per_step["all_gather"] == 2 * 2 * (p - 1) * n + regather * (p - 1) * n
    for out in res:  # the operators' own counts: calls, and the bytes handed to each collective
        k = 2 + regather
        assert out["kinds"] == {("forward", "all_gather"): [steps, steps * n // p],
                                ("forward", "reduce_scatter"): [steps, steps * n],
                                ("backward", "all_gather"): [steps * (k - 1), steps * (k - 1) * n // p],
                                ("backward", "reduce_scatter"): [steps, steps * n]}


def test_bad_inputs():
    X7, Y7 = bs.sp_data(n=8, seq_len=7)
    with pytest.raises(ValueError, match="7 tokens cannot be split evenly over 2.*seq_len divisible by tp=2"):
        ms.launch(lambda c: bs.sp_train_mlscale(c, X7, Y7), 2)
    with pytest.raises(ValueError, match=r"d_hidden=10 over tp=4.*\[3, 3, 2, 2\].*\[3, 3, 3, 1\]"):
        ms.launch(lambda c: bs.sp_train_mlscale(c, X, Y, d_hidden=10), 4)
    with pytest.raises(TypeError, match=r"unknown settings \['lr'\]"):
        ms.launch(lambda c: bs.sp_train_mlscale(c, X, Y, lr=0.1), 1)
    with pytest.raises(ValueError, match=r"X has shape \(32, 48\).*\(n, seq_len, d_model=6\)"):
        ms.launch(lambda c: bs.sp_train_mlscale(c, X.reshape(32, -1), Y), 1)
    with pytest.raises(TypeError, match="backend='torch'"):
        ms.launch(lambda c: bs.sp_train_torch(c, X, Y), 2)


def test_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mlscale.bridge_sp; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------- against torch (real processes)
@pytest.fixture(scope="module")
def run():
    """ONE launch of 2 processes (each start costs seconds)."""
    pytest.importorskip("torch", reason='the bridge needs PyTorch: pip install "mlscale[torch]"')
    from _mpi_batch import require_mpi

    require_mpi()
    return ms.launch(bs.sp_side_by_side, 2, args=(X, Y), backend="torch", timeout=180)


@pytest.mark.mpi
def test_mlscale_sp_equals_torch_sequence_parallel(run):
    d = bs.sp_compare(run)
    assert max(d.values()) < bridge.TOLERANCE, d
    want, model, (_, z0) = single_device()
    sim = ms.launch(lambda c: bs.sp_train_mlscale(c, X, Y), 2)
    for r, out in enumerate(run):
        t = out["torch"]
        lo, hi = r * S // 2, (r + 1) * S // 2
        assert t["positions"] == out["mlscale"]["positions"] == list(range(lo, hi))  # Shard(1) = contiguous blocks
        assert bridge.rel_diff(t["activation"], z0[:, lo:hi]) < bridge.TOLERANCE
        assert bridge.rel_diff(t["losses"], want) < bridge.TOLERANCE
        assert bridge.rel_diff(t["params"], model.params) < bridge.TOLERANCE
        for k, v in expected_shards(model, 2, r).items():
            assert t["shards"][k].shape == v.shape and bridge.rel_diff(t["shards"][k], v) < bridge.TOLERANCE, k
        # mlscale's code on TorchComm gives what it gave on the simulator, to the bit
        assert out["mlscale"]["losses"] == sim[r]["losses"] and np.array_equal(out["mlscale"]["params"],
                                                                                 sim[r]["params"])


@pytest.mark.mpi
def test_torch_placements_and_collectives(run):
    for out in run:
        t = out["torch"]
        assert t["placements"] == {
            "norm.weight": (("Replicate()",), (D,)), "norm.bias": (("Replicate()",), (D,)),
            "fc1.weight": (("Shard(dim=0)",), (H // 2, D)), "fc1.bias": (("Shard(dim=0)",), (H // 2,)),
            "fc2.weight": (("Shard(dim=1)",), (D, H // 2)), "fc2.bias": (("Replicate()",), (D,))}
        # the norm's gradients are partial sums over my tokens, reduced when the optimizer reads them
        assert t["grad_placements"]["norm.weight"] == t["grad_placements"]["norm.bias"] == ("Partial(sum)",)
        assert t["grad_placements"]["fc2.bias"] == ("Replicate()",)
        one = {"all_gather_into_tensor": 1, "reduce_scatter_tensor": 1}
        assert t["comms"] == {"forward": one, "backward": one, "step": {"all_reduce": 2}}
        k = out["mlscale"]["kinds"]  # mlscale (regather=False): the same all-gathers and reduce-scatters
        assert [k[(ph, c)][0] for ph in ("forward", "backward") for c in ("all_gather", "reduce_scatter")] == \
            [C["steps"]] * 4
