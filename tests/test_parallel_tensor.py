"""Tensor parallelism (Megatron-LM): every output and gradient equals the single-device
MLP's, with exactly one all-reduce forward and one backward per block (from the trace)."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import (ColumnParallelLinear, NaiveParallelMLP, ParallelMLP, RowParallelLinear,
                              count_calls, count_nbytes, ring_all_reduce_wire_bytes, shard_sizes, split_like)

TOL = dict(rtol=1e-12, atol=1e-13)


def _oracle(d, h, batch, activation, seed=3):
    ref = nn.MLP([d, h, d], activation=activation, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 100)
    X, dZ = rng.standard_normal((batch, d)), rng.standard_normal((batch, d))
    Z = ref.forward(X)
    ref.zero_grad()
    dX = ref.backward(dZ)
    return X, dZ, Z, dX, ref.state_dict(), {k: v.copy() for k, v in ref.named_grads().items()}


def _run_mlp(cls, p, d, h, batch, activation):
    X, dZ, Z, dX, P, G = _oracle(d, h, batch, activation)

    def prog(comm):
        mlp = cls(comm, d, h, activation, P["0.weight"], P["0.bias"], P["2.weight"], P["2.bias"])
        z = mlp.forward(X.copy())
        after_forward = comm.nbytes_sent
        dx = mlp.backward(dZ.copy())
        grads = {f"{n}.{k}": (mlp.fc1 if n == "fc1" else mlp.fc2, k, v)
                 for n, layer in (("fc1", mlp.fc1), ("fc2", mlp.fc2)) for k, v in layer.grads.items()}
        return z, dx, grads, count_calls(mlp.ops), count_nbytes(mlp.ops), after_forward, comm.nbytes_sent

    return ms.launch(prog, p), (X, dZ, Z, dX, P, G)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8])
def test_megatron_mlp_equals_single_device(p, activation):
    d, h, batch = 6, 11, 5  # 11 hidden columns do not divide by 2, 3, 4, 5 or 8
    res, (X, dZ, Z, dX, P, G) = _run_mlp(ParallelMLP, p, d, h, batch, activation)
    full = {"fc1.weight": G["0.weight"], "fc1.bias": G["0.bias"], "fc2.weight": G["2.weight"], "fc2.bias": G["2.bias"]}
    cover = np.zeros(h, dtype=int)
    for rank, (z, dx, grads, calls, nbytes, _, _) in enumerate(res):
        np.testing.assert_allclose(z, Z, **TOL)
        np.testing.assert_allclose(dx, dX, **TOL)
        for name, (layer, key, g) in grads.items():
            np.testing.assert_allclose(g, split_like(full[name], layer, key), **TOL, err_msg=f"rank {rank} {name}")
        cover[grads["fc1.weight"][0].start:grads["fc1.weight"][0].stop] += 1
        assert calls == {"forward": 1, "backward": 1}  # Megatron: g forward, f backward
        assert nbytes == {"forward": batch * d * 8, "backward": batch * d * 8}
    assert cover.tolist() == [1] * h  # the shards tile the hidden dimension
    assert [g[2]["fc1.weight"][2].shape[1] for g in res] == shard_sizes(h, p)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8])
def test_one_all_reduce_each_way_in_the_trace(p):
    d, h, batch = 5, 13, 3
    res, _ = _run_mlp(ParallelMLP, p, d, h, batch, "gelu")
    act = batch * d * 8
    tr = res.trace
    assert set(tr.labels()) <= {"all_reduce/ring"}
    # two ring all-reduces of one (batch, d_model) array: 2 x 2(p-1) x nbytes on the wire
    assert tr.bytes_sent() == 2 * ring_all_reduce_wire_bytes(act, p)
    assert len(tr.messages) == 2 * 2 * p * (p - 1)  # a ring all-reduce: 2(p-1) messages per rank
    for rank, (*_, fwd, total) in enumerate(res):  # the same bytes before backward as in it
        assert fwd == total - fwd
        assert tr.bytes_sent(rank=rank) == total
    assert sum(r[-2] for r in res) == ring_all_reduce_wire_bytes(act, p)  # forward: one all-reduce


@pytest.mark.parametrize("p", [2, 3])
def test_naive_split_is_right_but_talks_more(p):
    d, h, batch = 4, 9, 3
    res, (X, dZ, Z, dX, P, G) = _run_mlp(NaiveParallelMLP, p, d, h, batch, "gelu")
    meg, _ = _run_mlp(ParallelMLP, p, d, h, batch, "gelu")
    for z, dx, grads, calls, *_ in res:
        np.testing.assert_allclose(z, Z, **TOL)
        np.testing.assert_allclose(dx, dX, **TOL)
        layer, key, g = grads["fc2.weight"]
        np.testing.assert_allclose(g, split_like(G["2.weight"], layer, key), **TOL)
        assert calls == {"forward": 2, "backward": 2}
    assert set(res.trace.labels()) == {"all_gather/ring", "all_reduce/ring"}
    assert res.trace.bytes_sent() > meg.trace.bytes_sent()


def test_column_and_row_layers_alone():
    rng = np.random.default_rng(0)
    W, b, X = rng.standard_normal((7, 5)), rng.standard_normal(5), rng.standard_normal((4, 7))
    dY = rng.standard_normal((4, 5))

    def prog(comm):
        col = ColumnParallelLinear(comm, 7, 5, W, b, gather_output=True)
        y1 = col.forward(X)
        dx1 = col.backward(dY)
        row = RowParallelLinear(comm, 7, 5, W, b)
        y2 = row.forward(X[:, row.start:row.stop])
        dx2 = row.backward(dY)
        return y1, dx1, y2, dx2, (row.start, row.stop), col.grads["weight"], (col.start, col.stop)

    for rank, (y1, dx1, y2, dx2, (lo, hi), gw, (c0, c1)) in enumerate(ms.launch(prog, 3)):
        np.testing.assert_allclose(y1, X @ W + b, **TOL)
        np.testing.assert_allclose(y2, X @ W + b, **TOL)
        np.testing.assert_allclose(dx1, dY @ W.T, **TOL)
        np.testing.assert_allclose(dx2, (dY @ W.T)[:, lo:hi], **TOL)
        np.testing.assert_allclose(gw, (X.T @ dY)[:, c0:c1], **TOL)


def test_default_init_matches_nn_linear():
    def prog(comm):
        return ColumnParallelLinear(comm, 4, 6, seed=5).params["weight"]

    W = nn.Sequential([nn.Linear(4, 6)], seed=5, dtype=np.float64).named_params()["0.weight"]
    np.testing.assert_array_equal(np.concatenate(list(ms.launch(prog, 4)), axis=1), W)


def test_clear_errors():
    def too_many(comm):
        ParallelMLP(comm, 4, 3)

    with pytest.raises(ValueError, match="cannot split out_features=3 over 4"):
        ms.launch(too_many, 4)

    def bad_shape(comm):
        RowParallelLinear(comm, 6, 2, seed=0).forward(np.zeros((2, 6)))

    with pytest.raises(ValueError, match=r"expected \(batch, 3\)"):
        ms.launch(bad_shape, 2)

    def bad_weight(comm):
        ColumnParallelLinear(comm, 4, 6, weight=np.zeros((6, 4)))

    with pytest.raises(ValueError, match=r"shape \(4, 6\)"):
        ms.launch(bad_weight, 2)

    with pytest.raises(ValueError, match="activation"):
        ms.launch(lambda comm: ParallelMLP(comm, 4, 4, activation="swish"), 1)
