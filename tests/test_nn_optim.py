"""Optimizers of mlscale.nn against a tiny NumPy oracle written here (PyTorch semantics).

The oracle is the textbook update written out per step, independent of mlscale.ops:
SGD (torch.optim.SGD, dampening 0), Adam (Kingma and Ba 2015, Algorithm 1, with the
epsilon outside the bias-corrected sqrt as in PyTorch), AdamW (Loshchilov and Hutter 2019).
"""
import numpy as np
import pytest

from mlscale.nn import MLP, SGD, Adam, AdamW

TARGET = np.array([1.0, -2.0, 0.5, 3.0, -1.5])


def quad_grad(p):
    """Gradient of 0.5 * ||p - TARGET||^2 * scale, scales differ per coordinate."""
    return (p - TARGET) * np.array([1.0, 10.0, 0.1, 2.0, 5.0])


def oracle_sgd(p, steps, lr, momentum=0.0, wd=0.0, nesterov=False):
    p, buf = p.copy(), None
    for _ in range(steps):
        g = quad_grad(p) + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def oracle_adam(p, steps, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, adamw=False):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t in range(1, steps + 1):
        g = quad_grad(p)
        if adamw:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run(opt_factory, steps):
    p = np.zeros(5)
    opt = opt_factory(p)
    for _ in range(steps):
        opt.step(quad_grad(p))       # a bare params array: grads passed to step
    return p


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, weight_decay=0.1), dict(weight_decay=0.3)])
def test_sgd_matches_oracle(kw):
    got = run(lambda p: SGD(p, lr=0.05, **kw), steps=7)
    want = oracle_sgd(np.zeros(5), 7, 0.05, kw.get("momentum", 0.0), kw.get("weight_decay", 0.0),
                      kw.get("nesterov", False))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_first_adam_step_is_lr_times_sign():
    # bias correction makes step 1 move every coordinate by lr (up to eps), whatever the grad scale
    p = np.zeros(5)
    Adam(p, lr=0.01).step(quad_grad(p))
    np.testing.assert_allclose(p, 0.01 * np.sign(TARGET), rtol=1e-6)


@pytest.mark.parametrize("cls, kw, adamw", [
    (Adam, dict(), False),
    (Adam, dict(weight_decay=0.1, betas=(0.8, 0.99)), False),
    (AdamW, dict(weight_decay=0.1), True),
    (AdamW, dict(), True),                    # default weight_decay 0.01, as PyTorch
])
def test_adam_and_adamw_match_oracle(cls, kw, adamw):
    got = run(lambda p: cls(p, lr=0.1, **kw), steps=10)
    b1, b2 = kw.get("betas", (0.9, 0.999))
    wd = kw.get("weight_decay", 0.01 if adamw else 0.0)
    want = oracle_adam(np.zeros(5), 10, 0.1, b1, b2, wd=wd, adamw=adamw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if wd:
        other = oracle_adam(np.zeros(5), 10, 0.1, b1, b2, wd=wd, adamw=not adamw)
        assert not np.allclose(got, other)   # L2 and decoupled decay really differ


def test_optimizer_on_a_model_steps_the_views_and_keeps_them():
    rng = np.random.default_rng(0)
    model = MLP([3, 4, 2], seed=0)
    view = model.named_params()["0.weight"]
    before = view.copy()
    opt = Adam(model, lr=0.01)
    model.loss_and_grad(rng.normal(size=(5, 3)).astype(np.float32), np.array([0, 1, 1, 0, 1]))
    opt.step()
    assert opt.params is model.params and np.shares_memory(view, model.params)
    assert not np.allclose(view, before)
    assert opt.step_count == 1
    opt.zero_grad()
    assert not model.grads.any()
    state = opt.state_dict()
    opt2 = Adam(model.copy(), lr=0.01).load_state_dict(state)
    assert opt2.step_count == 1 and np.array_equal(opt2.m, opt.m) and not np.shares_memory(opt2.m, opt.m)


def test_sgd_descends_a_training_loss():
    from mlscale.data import blobs

    X, y = blobs(200, num_classes=3, dim=4, seed=0)
    model = MLP([4, 16, 3], seed=0)
    opt = SGD(model, lr=0.2, momentum=0.9)
    first = model.loss_and_grad(X, y)
    for _ in range(30):
        opt.step()
        last = model.loss_and_grad(X, y)
    assert last < 0.3 * first


@pytest.mark.parametrize("bad, match", [
    (lambda: SGD(np.zeros(3), lr=0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda: SGD(np.zeros(3), lr=-1), "lr must be >= 0"),
    (lambda: SGD(np.zeros((3, 2)), lr=0.1), "1-D params"),
    (lambda: SGD(np.zeros(3, dtype=np.int64), lr=0.1), "floats"),
    (lambda: Adam(np.zeros(3), betas=(1.0, 0.9)), r"betas must be in \[0, 1\)"),
    (lambda: SGD(np.zeros(3), lr=0.1).step(), "pass the grads"),
    (lambda: SGD(np.zeros(3), lr=0.1).step(np.zeros(4)), r"grads shape \(4,\) does not match"),
])
def test_bad_arguments_raise_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()
