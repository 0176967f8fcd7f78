"""Flat buffers, named views, buckets and backward hooks, checkpoints, FLOPs of mlscale.nn models."""
import numpy as np
import pytest

from mlscale.nn import GELU, MLP, Linear, ReLU, Sequential


def test_named_params_are_views_into_the_flat_buffer():
    model = MLP([4, 3, 2], seed=0)
    views = model.named_params()
    assert list(views) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [v.shape for v in views.values()] == [(4, 3), (3,), (3, 2), (2,)]
    assert model.params.shape == (4 * 3 + 3 + 3 * 2 + 2,) == (model.num_params,)
    views["2.weight"][1, 0] = 123.0                        # write through the view ...
    assert model.params[12 + 3 + 1 * 2 + 0] == 123.0       # ... changes the flat buffer
    model.params[0] = -7.0                                 # and the other way round
    assert views["0.weight"][0, 0] == -7.0
    assert model.layers[0].params["weight"][0, 0] == -7.0  # the layer computes with the same memory
    for name, v in views.items():
        assert np.shares_memory(v, model.params), name
    for name, g in model.named_grads().items():
        assert np.shares_memory(g, model.grads), name


def test_backward_writes_into_the_flat_grads_and_accumulates():
    rng = np.random.default_rng(0)
    model = MLP([5, 8, 3], seed=1, dtype=np.float64)
    x, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
    model.loss_and_grad(x, y)
    g1 = model.grads.copy()
    assert np.abs(g1).sum() > 0
    model.loss_and_grad(x, y, zero_grad=False)            # gradient accumulation: adds
    np.testing.assert_allclose(model.grads, 2 * g1)
    model.zero_grad()
    assert not model.grads.any()
    # the loss over the whole batch equals the average of two half-batch accumulations
    model.loss_and_grad(x[:5], y[:5])
    model.loss_and_grad(x[5:], y[5:], zero_grad=False)
    np.testing.assert_allclose(model.grads / 2, g1, rtol=1e-12)


def test_params_setter_copies_into_the_buffer_and_keeps_views():
    model = MLP([3, 4, 2], seed=0)
    buf, view = model.params, model.named_params()["0.weight"]
    model.params = np.arange(model.num_params, dtype=np.float32)
    assert model.params is buf
    assert view[0, 1] == 1.0
    with pytest.raises(ValueError, match=r"expected \(26,\)"):
        model.params = np.zeros(5, dtype=np.float32)


def test_init_is_deterministic_and_depends_on_seed_and_dtype():
    a, b, c = MLP([6, 5, 3], seed=3), MLP([6, 5, 3], seed=3), MLP([6, 5, 3], seed=4)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    d = MLP([6, 5, 3], seed=3, dtype=np.float64)
    assert a.params.dtype == np.float32 and d.params.dtype == np.float64
    np.testing.assert_array_equal(a.params, d.params.astype(np.float32))
    bound = 1 / np.sqrt(6)  # PyTorch nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = d.named_params()["0.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.5 * bound


def test_buckets_cover_the_buffer_in_reverse_layer_order():
    model = MLP([10, 20, 30, 5], seed=0)  # float32: weights 800, 2400, 600 bytes
    nbytes = model.dtype.itemsize
    for bucket_bytes in [1, 500, 1000, 3000, 10**9]:
        bs = model.buckets(bucket_bytes)
        assert bs[0].stop == model.num_params and bs[-1].start == 0
        for prev, nxt in zip(bs, bs[1:]):
            assert nxt.stop == prev.start                  # contiguous, walking backwards
        for b in bs:
            assert b.nbytes == (b.stop - b.start) * nbytes
            assert b.nbytes >= bucket_bytes or b is bs[-1]
        names = [n for b in bs for n in b.names]
        assert names == [s.name for s in reversed(model.slots)]
    assert len(model.buckets(1)) == 6                     # one per parameter
    assert model.buckets(20)[0].names == ("4.bias",)      # 5 float32 = 20 bytes: full, closed
    assert model.buckets(21)[0].names == ("4.bias", "4.weight")
    assert len(model.buckets(10**9)) == 1
    assert [b.names for b in model.buckets(1000)] == [("4.bias", "4.weight", "2.bias", "2.weight"),
                                                      ("0.bias", "0.weight")]
    with pytest.raises(ValueError, match="bucket_bytes"):
        model.buckets(0)


def test_backward_hooks_fire_in_the_order_grads_are_produced():
    rng = np.random.default_rng(0)
    model = MLP([4, 6, 5, 3], seed=0, dtype=np.float64)
    x, y = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    seen, bucket_events = [], []

    def on_grad_ready(name, grad):
        assert np.shares_memory(grad, model.grads)
        seen.append((name, grad.copy()))

    def on_bucket_ready(bucket, grads):
        # every parameter of the bucket is final when its bucket fires
        assert {n for n, _ in seen} >= set(bucket.names)
        assert np.shares_memory(grads, model.grads) and grads.shape == (bucket.stop - bucket.start,)
        bucket_events.append((bucket.index, len(seen), grads.copy()))

    buckets = model.buckets(200)
    model.loss_and_grad(x, y, on_grad_ready=on_grad_ready, buckets=buckets, on_bucket_ready=on_bucket_ready)
    assert [n for n, _ in seen] == ["4.bias", "4.weight", "2.bias", "2.weight", "0.bias", "0.weight"]
    final = model.named_grads()
    for name, g in seen:                              # the grad passed to the hook is already final
        np.testing.assert_array_equal(g, final[name])
    assert [i for i, _, _ in bucket_events] == list(range(len(buckets)))
    assert len(buckets) >= 2 and bucket_events[0][1] < len(seen)   # bucket 0 fired before backward ended
    for (i, _, g), b in zip(bucket_events, buckets):
        np.testing.assert_array_equal(g, model.grads[b.slice])
    with pytest.raises(ValueError, match="both"):
        model.backward(np.zeros((7, 3)), buckets=buckets)


def test_copy_and_state_dict_round_trip():
    rng = np.random.default_rng(0)
    a = MLP([4, 5, 3], activation="gelu", seed=0)
    b = a.copy()
    b.params[:] += 1.0
    assert not np.allclose(a.params, b.params)           # independent buffers
    assert not np.shares_memory(a.params, b.params)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    assert not np.allclose(a.forward(x), b.forward(x))   # and b computes with its own views
    state = a.state_dict()
    assert list(state) == list(a.named_params())
    c = MLP([4, 5, 3], activation="gelu", seed=99).load_state_dict(state)
    np.testing.assert_array_equal(c.params, a.params)
    state["0.weight"][:] = 0                             # a copy, not a view
    assert a.named_params()["0.weight"].any()
    with pytest.raises(KeyError, match="missing"):
        c.load_state_dict({"0.weight": state["0.weight"]})
    bad = dict(a.state_dict(), **{"0.bias": np.zeros(7)})
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(7,\)"):
        c.load_state_dict(bad)


def test_predict_accuracy_and_input_dtype():
    model = Sequential([Linear(2, 2, bias=False)], seed=0)
    model.params = np.array([1, 0, 0, 1], dtype=np.float32)   # identity: predict the larger input
    x = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])       # float64 in, cast to float32
    assert model.forward(x).dtype == np.float32
    np.testing.assert_array_equal(model.predict(x, batch_size=2), [0, 1, 0])
    assert model.accuracy(x, np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_flops_per_sample_is_about_six_per_parameter():
    model = MLP([784, 512, 512, 10], seed=0)
    weights = 784 * 512 + 512 * 512 + 512 * 10
    assert model.flops_per_sample(backward=False) == 2 * weights + (512 + 512 + 10)
    assert model.flops_per_sample() == 6 * weights + 2 * (512 + 512 + 10)
    assert model.flops_per_sample() == pytest.approx(6 * model.num_params, rel=0.01)


def test_layers_without_params_and_repr():
    model = Sequential([Linear(3, 3), GELU(), ReLU(), Linear(3, 2)], seed=0)
    assert [s.name for s in model.slots] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert "num_params=20" in repr(model)


@pytest.mark.parametrize("bad, match", [
    (lambda: MLP([5]), "at least|>= 2"),
    (lambda: MLP([5, 3], activation="swish"), "activation 'swish' unknown"),
    (lambda: MLP([5, 3], dtype=np.int32), "float type"),
    (lambda: MLP([5, 3], xp="torch"), "xp must be"),
])
def test_bad_construction_raises_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_importing_nn_and_data_does_not_import_cupy_or_sklearn():
    import subprocess
    import sys

    code = ("import sys, mlscale.nn, mlscale.data; "
            "bad = [m for m in ('cupy', 'sklearn') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("xp_name", ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_one_body_on_numpy_and_cupy(xp_name):
    """The same training step on either array library gives the same numbers (float64)."""
    import importlib

    xp = importlib.import_module(xp_name)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 6)), rng.integers(0, 4, 16)
    ref = MLP([6, 8, 4], activation="gelu", seed=0, dtype=np.float64)
    ref_loss = ref.loss_and_grad(X, y)
    model = MLP([6, 8, 4], activation="gelu", seed=0, dtype=np.float64, xp=xp_name)
    assert model.xp is xp and type(model.params).__module__.split(".")[0] == xp_name
    loss = model.loss_and_grad(xp.asarray(X), xp.asarray(y))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    grads = model.grads.get() if xp_name == "cupy" else model.grads
    np.testing.assert_allclose(grads, ref.grads, rtol=1e-10, atol=1e-13)
    assert model.accuracy(xp.asarray(X), y) == ref.accuracy(X, y)
    assert model.to("numpy").xp is np and np.shares_memory(model.named_params()["0.weight"], model.params)
    if xp_name == "numpy":
        with pytest.raises(ValueError, match="xp must be"):
            model.to("jax")
