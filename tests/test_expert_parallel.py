"""Expert parallelism on sim: ExpertParallelMoE over ep = 1, 2, 4 ranks (and a dp x ep
mesh) equals the single-device oracle nn.MoE(groups=ep) on the ranks' tokens
concatenated, to 1e-12 in float64: outputs, dropped tokens, input grads, every expert
grad (my slice), the router grad (summed over the ranks), the losses (summed). Bytes
and messages of the all-to-alls from the trace equal ep_wire_bytes; E % ep != 0 is a
ValueError naming both, never a hang."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import ExpertParallelMoE, Mesh, ep_traffic, ep_wire_bytes, load_imbalance

D, DFF, T = 6, 5, 10  # T tokens per rank
KW = dict(aux_loss_coef=0.1, z_loss_coef=0.01)


def _data(p, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((p * T, D)), rng.standard_normal((p * T, D))


def _oracle(p, E, k, cf, ren, seed=3, x=None, dy=None):
    layer = nn.MoE(D, DFF, E, top_k=k, capacity_factor=cf, renormalize=ren, groups=p, **KW)
    model = nn.Sequential([layer], seed=seed, dtype=np.float64)
    y = model.forward(x)
    model.zero_grad()
    dx = model.backward(dy)
    return layer, model, y, dx


def _ep_program(comm, E, k, cf, ren, x, dy, mesh_sizes=None, seed=3):
    where = Mesh(comm, mesh_sizes) if mesh_sizes else comm
    layer = ExpertParallelMoE(where, D, DFF, E, top_k=k, capacity_factor=cf, renormalize=ren, **KW)
    model = nn.Sequential([layer], seed=seed, dtype=np.float64)
    init = {n: v.copy() for n, v in model.named_params().items()}
    mine = slice(comm.rank * T, (comm.rank + 1) * T)
    y = model.forward(x[mine])
    model.zero_grad()
    dx = model.backward(dy[mine])
    st = {a: getattr(layer, a) for a in ("aux_loss", "z_loss", "dropped", "dropped_tokens", "expert_load",
                                         "sent_rows", "recv_rows", "tokens_per_expert", "capacity")}
    return y, dx, init, {n: g.copy() for n, g in model.named_grads().items()}, st, layer.first, layer.El


CASES = [(ep, E, k, cf, ren) for ep in (1, 2, 4) for E in (4, 8) for (k, cf, ren) in
         [(1, 1.0, False), (2, 1.0, True), (2, None, False)]]


@pytest.mark.parametrize("ep,E,k,cf,ren", CASES)
def test_expert_parallel_equals_one_device(ep, E, k, cf, ren):
    x, dy = _data(ep)
    one, model, y1, dx1 = _oracle(ep, E, k, cf, ren, x=x, dy=dy)
    p1, g1 = model.named_params(), model.named_grads()
    res = ms.launch(_ep_program, ep, args=(E, k, cf, ren, x, dy))
    assert sum(r[4]["dropped"] for r in res) == one.dropped
    assert sum(r[4]["dropped_tokens"] for r in res) == one.dropped_tokens
    if cf is not None and ep > 1:
        assert one.dropped > 0  # the equality below includes dropped tokens
    np.testing.assert_array_equal(sum(r[4]["tokens_per_expert"] for r in res), one.tokens_per_expert)
    np.testing.assert_array_equal(np.concatenate([r[4]["expert_load"] for r in res]), one.tokens_per_expert)
    assert sum(r[4]["aux_loss"] for r in res) == pytest.approx(one.aux_loss, abs=1e-12)
    assert sum(r[4]["z_loss"] for r in res) == pytest.approx(one.z_loss, abs=1e-12)
    router = np.zeros_like(g1["0.router.weight"])
    for rank, (y, dx, init, grads, st, first, El) in enumerate(res):
        mine = slice(rank * T, (rank + 1) * T)
        np.testing.assert_allclose(y, y1[mine], rtol=0, atol=1e-12)
        np.testing.assert_allclose(dx, dx1[mine], rtol=0, atol=1e-12)
        assert El == E // ep and first == rank * El
        for name in ("w1", "b1", "w2", "b2"):
            key = f"0.experts.{name}"
            np.testing.assert_array_equal(init[key], p1[key][first:first + El])  # same init as one device
            np.testing.assert_allclose(grads[key], g1[key][first:first + El], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(init["0.router.weight"], p1["0.router.weight"])
        router += grads["0.router.weight"]
    np.testing.assert_allclose(router, g1["0.router.weight"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("ep,E,k", [(2, 4, 2), (4, 8, 1), (4, 4, 2)])
def test_bytes_and_messages_from_the_trace(ep, E, k):
    x, dy = _data(ep, seed=1)
    res = ms.launch(_ep_program, ep, args=(E, k, 1.0, False, x, dy))
    tr = ep_traffic(res.trace)
    assert set(res.trace.labels()) == {"all_to_all/pairwise"}
    for rank, r in enumerate(res):
        st = r[4]
        want = ep_wire_bytes(st["sent_rows"], st["recv_rows"], rank, D, 8, E)
        assert tr["bytes_sent"][rank] == want
        assert tr["messages"][rank] == 5 * (ep - 1)  # counts, dispatch, combine, and the two reversed
        # what a rank receives = what it sent back: bytes_received = same formula, roles swapped
        assert tr["bytes_received"][rank] == want
    # the rows I send rank s are the rows s receives from me
    sent = np.array([r[4]["sent_rows"] for r in res])
    recv = np.array([r[4]["recv_rows"] for r in res])
    np.testing.assert_array_equal(sent, recv.T)
    loads = [int(r[4]["expert_load"].sum()) for r in res]
    assert load_imbalance(loads) == pytest.approx(max(loads) / np.mean(loads))


def test_dp_by_ep_mesh_each_dp_slice_equals_its_oracle():
    x, dy = _data(4, seed=2)
    res = ms.launch(_ep_program, 4, args=(4, 2, 1.0, True, x, dy, {"dp": 2, "ep": 2}))
    for dp in range(2):
        rows = slice(dp * 2 * T, (dp + 1) * 2 * T)  # ranks 2dp, 2dp+1 form one ep group
        one, model, y1, dx1 = _oracle(2, 4, 2, 1.0, True, x=x[rows], dy=dy[rows])
        g1 = model.named_grads()
        router = 0
        for j in range(2):
            y, dx, init, grads, st, first, El = res[2 * dp + j]
            np.testing.assert_allclose(y, y1[j * T:(j + 1) * T], rtol=0, atol=1e-12)
            np.testing.assert_allclose(dx, dx1[j * T:(j + 1) * T], rtol=0, atol=1e-12)
            np.testing.assert_allclose(grads["0.experts.w1"], g1["0.experts.w1"][first:first + El], rtol=0, atol=1e-12)
            router = router + grads["0.router.weight"]
        np.testing.assert_allclose(router, g1["0.router.weight"], rtol=0, atol=1e-12)
    for a, b in [(m.src, m.dst) for m in res.trace.messages]:
        assert a // 2 == b // 2  # tokens only travel inside an ep group


def test_experts_not_divisible_by_ep_is_a_clear_error():
    def prog(comm):
        ExpertParallelMoE(comm, D, DFF, 6, top_k=1)

    with pytest.raises(ValueError, match=r"num_experts=6 .* ep=4"):
        ms.launch(prog, 4)
    with pytest.raises(ValueError, match="num_experts=3 .* ep=2"):
        ms.launch(lambda c: ExpertParallelMoE(Mesh(c, {"dp": 2, "ep": 2}), D, DFF, 3), 4)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="top_k=3 > num_experts=2"):
        ms.launch(lambda c: ExpertParallelMoE(c, D, DFF, 2, top_k=3), 2)

    def wrong_d(comm):
        m = nn.Sequential([ExpertParallelMoE(comm, D, DFF, 2)], seed=0, dtype=np.float64)
        m.forward(np.zeros((4, D + 1)))

    with pytest.raises(ValueError, match=r"expected \(tokens, 6\)"):
        ms.launch(wrong_d, 2)


@pytest.mark.gpu
def test_on_cupy_equals_numpy():
    """nn.MoE and ExpertParallelMoE on CuPy arrays (sim: 2 logical GPUs on one device)."""
    import cupy

    x, dy = _data(2)
    one, model, y1, dx1 = _oracle(2, 4, 2, 1.0, True, x=x, dy=dy)
    model.to("cupy")
    y = model.forward(cupy.asarray(x))
    np.testing.assert_allclose(cupy.asnumpy(y), y1, rtol=0, atol=1e-12)

    def prog(comm):
        layer = ExpertParallelMoE(comm, D, DFF, 4, top_k=2, capacity_factor=1.0, renormalize=True, **KW)
        m = nn.Sequential([layer], seed=3, dtype=np.float64, xp="cupy")
        mine = slice(comm.rank * T, (comm.rank + 1) * T)
        out = m.forward(cupy.asarray(x[mine]))
        m.zero_grad()
        return cupy.asnumpy(out), cupy.asnumpy(m.backward(cupy.asarray(dy[mine])))

    res = ms.launch(prog, 2, device="gpu")
    np.testing.assert_allclose(np.concatenate([r[0] for r in res]), y1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[1] for r in res]), dx1, rtol=0, atol=1e-12)
