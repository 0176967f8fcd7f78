"""nn.MoE: the hand-written backward equals float64 central differences (params and input,
top-1/top-2, renormalised gates, drops, aux and z losses, groups); the forward equals a
plain per-token loop (the specification: GShard's slot order); capacity drops counted
exactly on a hand-made router; the aux loss equals Switch's formula; a few SGD steps
reduce a toy loss; bad arguments name the fix."""
import math

import numpy as np
import pytest

from mlscale import nn
from mlscale.nn.moe import capacity


def _model(d=5, d_ff=7, E=4, seed=1, **kw):
    layer = nn.MoE(d, d_ff, E, **kw)
    return layer, nn.Sequential([layer], seed=seed, dtype=np.float64)


def _gelu(h):
    return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))


def loop_reference(x, P, E, k, cf, renormalize, groups, alpha, beta):
    """One token at a time, one choice at a time: the specification of the layer."""
    T, d = x.shape
    n = T // groups
    y = np.zeros_like(x)
    kept, routed, aux, z = np.zeros(E, int), np.zeros(E, int), 0.0, 0.0
    for g in range(groups):
        xs = x[g * n:(g + 1) * n]
        logits = xs @ P["router.weight"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        C = n * k if cf is None else math.ceil(cf * k * n / E - 1e-9)
        fill = [0] * E
        choices = [sorted(range(E), key=lambda e: (-probs[t, e], e))[:k] for t in range(n)]
        for j in range(k):  # first choices of every token, then second choices
            for t in range(n):
                e = choices[t][j]
                routed[e] += 1
                if fill[e] >= C:
                    continue  # dropped
                fill[e] += 1
                kept[e] += 1
                gate = probs[t, e] / (probs[t, choices[t]].sum() if renormalize else 1.0)
                h = xs[t] @ P["experts.w1"][e] + P["experts.b1"][e]
                y[g * n + t] += gate * (_gelu(h) @ P["experts.w2"][e] + P["experts.b2"][e])
        f = np.array([sum(c[0] == e for c in choices) for e in range(E)]) / n
        aux += alpha * E * float(f @ probs.mean(0)) / groups
        lse = np.log(np.exp(logits).sum(1))
        z += beta * float((lse ** 2).mean()) / groups
    return y, kept, routed, aux, z


CONFIGS = [dict(top_k=1, capacity_factor=1.0), dict(top_k=2, capacity_factor=1.0, renormalize=True),
           dict(top_k=2, capacity_factor=0.75, groups=2), dict(top_k=1, capacity_factor=None, groups=3),
           dict(top_k=3, capacity_factor=1.25, renormalize=True, groups=2)]


@pytest.mark.parametrize("kw", CONFIGS)
def test_forward_equals_the_per_token_loop(kw):
    layer, model = _model(aux_loss_coef=0.1, z_loss_coef=0.01, **kw)
    x = np.random.default_rng(0).standard_normal((12, 5))
    y = model.forward(x)
    P = {k[2:]: v for k, v in model.named_params().items()}
    want, kept, routed, aux, z = loop_reference(x, P, 4, kw["top_k"], kw["capacity_factor"],
                                                kw.get("renormalize", False), kw.get("groups", 1), 0.1, 0.01)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(layer.tokens_per_expert, kept)
    np.testing.assert_array_equal(layer.routed_per_expert, routed)
    assert layer.dropped == int(routed.sum() - kept.sum())
    assert layer.aux_loss == pytest.approx(aux, abs=1e-14) and layer.z_loss == pytest.approx(z, abs=1e-14)
    if kw["capacity_factor"] is None:
        assert layer.dropped == 0
    elif kw["capacity_factor"] < 1.01:
        assert layer.dropped > 0


@pytest.mark.parametrize("kw", CONFIGS[:4])
def test_backward_equals_central_differences(kw):
    layer, model = _model(aux_loss_coef=0.1, z_loss_coef=0.01, **kw)
    rng = np.random.default_rng(2)
    x, R = rng.standard_normal((12, 5)), rng.standard_normal((12, 5))

    def objective(xx):
        return float((model.forward(xx) * R).sum()) + layer.aux_loss + layer.z_loss

    objective(x)
    model.zero_grad()
    dx = model.backward(R)
    eps, p = 1e-6, model.params
    num = np.empty(model.num_params)
    for i in range(model.num_params):
        v = p[i]
        p[i] = v + eps
        a = objective(x)
        p[i] = v - eps
        b = objective(x)
        p[i] = v
        num[i] = (a - b) / (2 * eps)
    np.testing.assert_allclose(model.grads, num, rtol=0, atol=1e-7)
    ndx = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xx = x.copy()
        xx[i] += eps
        a = objective(xx)
        xx[i] -= 2 * eps
        ndx[i] = (a - objective(xx)) / (2 * eps)
    np.testing.assert_allclose(dx, ndx, rtol=0, atol=1e-7)
    assert np.abs(model.named_grads()["0.router.weight"]).max() > 1e-3  # the router does learn


def _hand_made(E, top_k, cf, pref):
    """Tokens that are one-hot rows: token t's router logits are 10 * pref[t] (E wide)."""
    layer, model = _model(d=E, d_ff=3, E=E, top_k=top_k, capacity_factor=cf, aux_loss_coef=0.0)
    model.named_params()["0.router.weight"][...] = 10.0 * np.eye(E)
    return layer, model, np.asarray(pref, dtype=np.float64)


def test_top1_drops_in_token_order():
    # 6 tokens, E=2, C = ceil(1.0 * 1 * 6 / 2) = 3: tokens 0,1,2,3,4 choose expert 0, token 5 expert 1
    layer, model, x = _hand_made(2, 1, 1.0, [[1, 0]] * 5 + [[0, 1]])
    y = model.forward(x)
    assert layer.capacity == 3 and layer.dropped == 2 and layer.dropped_tokens == 2
    assert list(layer.tokens_per_expert) == [3, 1] and list(layer.routed_per_expert) == [5, 1]
    assert np.all(y[3:5] == 0) and np.all(np.abs(y[:3]).sum(axis=1) > 0)  # the LAST ones are dropped


def test_top2_first_choices_before_second_choices():
    # E=3, 3 tokens, k=2: C = ceil(1.0 * 2 * 3 / 3) = 2.
    # tokens 0, 1 pick (0 then 1); token 2 picks (1 then 0).
    # slot order: firsts 0->e0, 1->e0, 2->e1; seconds 0->e1, 1->e1 (full: dropped), 2->e0 (full: dropped)
    layer, model, x = _hand_made(3, 2, 1.0, [[1, 0.5, 0], [1, 0.5, 0], [0.5, 1, 0]])
    model.forward(x)
    assert layer.capacity == 2 and layer.dropped == 2 and layer.dropped_tokens == 0
    assert list(layer.tokens_per_expert) == [2, 2, 0] and list(layer.routed_per_expert) == [3, 3, 0]
    r = layer._routes[0]
    assert r.keep.tolist() == [[True, True], [True, False], [True, False]]
    assert r.rows[1].tolist() == [2, 0]  # expert 1's slots: token 2's first choice, then token 0's second


def test_capacity_formula():
    assert capacity(8, 4, 2, 1.25) == 5 and capacity(6, 2, 1, 1.0) == 3 and capacity(10, 4, 1, 1.0) == 3
    assert capacity(12, 4, 2, None) == 24


def test_aux_loss_equals_switch_formula_and_uniform_router_gives_alpha():
    layer, model = _model(E=4, top_k=2, capacity_factor=None, aux_loss_coef=0.01, groups=1)
    x = np.random.default_rng(5).standard_normal((16, 5))
    model.forward(x)
    logits = x @ model.named_params()["0.router.weight"]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    f = np.bincount(p.argmax(1), minlength=4) / 16
    assert layer.aux_loss == pytest.approx(0.01 * 4 * float(f @ p.mean(0)), abs=1e-15)
    model.named_params()["0.router.weight"][...] = 0.0  # uniform probs; first choice = expert 0 (tie)
    model.forward(x)
    assert layer.aux_loss == pytest.approx(0.01, abs=1e-15)  # alpha E * (1 * 1/E)


def test_three_d_input_and_training_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 6))  # (batch, seq, d)
    layer, model = _model(d=6, d_ff=12, E=4, top_k=2, capacity_factor=1.5)
    assert model.forward(x).shape == (4, 8, 6)
    target = np.tanh(x[..., ::-1] * 2.0)
    losses = []
    opt = nn.SGD(model, lr=2.0, momentum=0.9)
    for _ in range(40):
        y = model.forward(x)
        losses.append(float(((y - target) ** 2).mean()) + layer.aux_loss)
        model.zero_grad()
        model.backward(2 * (y - target) / y.size)
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="top_k=5 > num_experts=4"):
        nn.MoE(4, 8, 4, top_k=5)
    with pytest.raises(ValueError, match="capacity_factor=0"):
        nn.MoE(4, 8, 4, capacity_factor=0)
    with pytest.raises(ValueError, match="activation='swish'"):
        nn.MoE(4, 8, 4, activation="swish")
    layer, model = _model(groups=5)
    with pytest.raises(ValueError, match="12 tokens cannot be cut into 5 equal groups"):
        model.forward(np.zeros((12, 5)))
    with pytest.raises(ValueError, match=r"expected \(tokens, 5\)"):
        model.forward(np.zeros((12, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MoE(4, 8, 4).backward(np.zeros((2, 4)))
