"""Every backward in mlscale.nn checked against central finite differences in float64.

Oracle: d f / d x_i ~ (f(x + h e_i) - f(x - h e_i)) / 2h, with f = sum(out * W) for a
fixed random W (so every output element matters). Kinks of ReLU are kept away from.
"""
import numpy as np
import pytest

from mlscale.nn import GELU, MLP, Linear, ReLU, Sequential, Tanh, softmax_cross_entropy

H = 1e-6


def numeric_grad(f, x):
    """Central differences of the scalar f() with respect to every element of x (in place)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        fp = f()
        flat[i] = old - H
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * H)
    return g


def assert_close(analytic, numeric, tol=1e-7):
    err = np.max(np.abs(analytic - numeric)) / max(1.0, np.max(np.abs(numeric)))
    assert err < tol, f"max relative error {err:.3e}"


def away_from_zero(rng, shape, gap=0.05):
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < gap, x + np.sign(x + 1e-12) * 2 * gap, x)


@pytest.mark.parametrize("layer", [ReLU(), GELU(), Tanh()], ids=["relu", "gelu", "tanh"])
def test_activation_input_grad(layer):
    rng = np.random.default_rng(1)
    x = away_from_zero(rng, (5, 7)) * 2
    w = rng.normal(size=(5, 7))
    out = layer.forward(x)
    dx = layer.backward(w)
    assert_close(dx, numeric_grad(lambda: float((layer.forward(x) * w).sum()), x))
    assert out.shape == x.shape


def test_gelu_matches_its_formula_and_known_values():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    y = GELU().forward(x)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    # tanh-approximate GELU values, as torch.nn.functional.gelu(x, approximate="tanh")
    np.testing.assert_allclose(y, [-0.0036373920817729, -0.1588080093917498, 0.0, 0.8411919906082502,
                                   2.9963626079182271], rtol=1e-12)


def test_relu_gradient_is_zero_at_zero_and_below():
    r = ReLU()
    r.forward(np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(r.backward(np.ones((1, 3))), [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize("bias", [True, False])
def test_linear_grads_weight_bias_and_input(bias):
    rng = np.random.default_rng(2)
    model = Sequential([Linear(4, 3, bias=bias)], seed=3, dtype=np.float64)
    lin = model.layers[0]
    x = rng.normal(size=(6, 4))
    w = rng.normal(size=(6, 3))
    f = lambda: float((model.forward(x) * w).sum())  # noqa: E731
    model.forward(x)
    dx = model.backward(w)
    assert_close(dx, numeric_grad(f, x))
    assert_close(lin.grads["weight"], numeric_grad(f, lin.params["weight"]))
    if bias:
        assert_close(lin.grads["bias"], numeric_grad(f, lin.params["bias"]))
    np.testing.assert_allclose(model.forward(x), x @ lin.params["weight"] + (lin.params["bias"] if bias else 0))


def test_softmax_cross_entropy_grad_and_value():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    loss, dlogits = softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-12)
    assert_close(dlogits, numeric_grad(lambda: softmax_cross_entropy(logits, labels)[0], logits))


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    loss, d = softmax_cross_entropy(logits, np.array([0, 0]))
    assert np.isfinite(loss) and loss == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(d).all()


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_mlp_every_param_grad_matches_finite_differences(activation):
    rng = np.random.default_rng(5)
    model = MLP([3, 5, 4, 3], activation=activation, seed=7, dtype=np.float64)
    x = rng.normal(size=(8, 3))
    y = rng.integers(0, 3, size=8)
    model.loss_and_grad(x, y)
    f = lambda: softmax_cross_entropy(model.forward(x), y)[0]  # noqa: E731
    numeric = numeric_grad(f, model.params)  # perturbs the flat buffer itself: the views see it
    assert_close(model.grads, numeric)


def test_mlp_input_grad_matches_finite_differences():
    rng = np.random.default_rng(6)
    model = MLP([4, 6, 2], activation="gelu", seed=1, dtype=np.float64)
    x = rng.normal(size=(3, 4))
    y = np.array([0, 1, 1])
    loss, d = softmax_cross_entropy(model.forward(x), y)
    dx = model.backward(d)
    assert_close(dx, numeric_grad(lambda: softmax_cross_entropy(model.forward(x), y)[0], x))


@pytest.mark.parametrize("bad, match", [
    (lambda: softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 1])), r"labels must be \(3,\)"),
    (lambda: softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 4])), r"\[0, 4\)"),
    (lambda: softmax_cross_entropy(np.zeros((2, 4)), np.array([0.0, 1.0])), "integers"),
    (lambda: softmax_cross_entropy(np.zeros(4), np.array([0])), r"\(batch, num_classes\)"),
    (lambda: MLP([4, 3]).forward(np.zeros((2, 5))), r"expected \(batch, 4\)"),
    (lambda: Sequential([Linear(2, 2)]).layers[0].forward(np.zeros((1, 3))), "expected"),
    (lambda: Linear(2, 2).forward(np.zeros((1, 2))), "put it in a model"),
])
def test_bad_input_raises_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        bad()
