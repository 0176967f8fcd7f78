"""Shape-only execution (mlscale.meta): shapes and dtypes equal NumPy's, FLOPs equal the
formulas (matmul 2mnk; a GPT step = mlscale.nn.flops.model_flops), a GPT forward +
backward + Adam step runs unchanged on meta arrays, memory by kind equals an analytic
count, and a data-parallel step on sim sends the same messages as the real run."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.meta import Meta, MetaArray, OutOfMemoryError, ShapeOnlyError
from mlscale.nn import GPT, MLP, Adam, GPTConfig, SGD
from mlscale.nn.flops import matmul_params, model_flops
from mlscale.nn.module import saved_arrays, saved_nbytes

R = np.random.default_rng(0)
A = R.standard_normal((2, 3, 4)).astype(np.float32)
B = R.standard_normal((4, 5))
C = R.standard_normal((3, 1)).astype(np.float16)
I = np.array([[0, 2], [1, 1]])
J = np.array([3, 0])

# (name, f(xp, a, b, c, i, j)): each runs on NumPy arrays and on their shape-only twins
CASES = [
    ("add broadcast", lambda xp, a, b, c, i, j: a + c),
    ("scalar keeps float16", lambda xp, a, b, c, i, j: c * 2.5),
    ("int / int", lambda xp, a, b, c, i, j: i / 2),
    ("compare", lambda xp, a, b, c, i, j: a > 0),
    ("sqrt of ints", lambda xp, a, b, c, i, j: xp.sqrt(i)),
    ("tanh exp log", lambda xp, a, b, c, i, j: xp.log(xp.exp(xp.tanh(a)))),
    ("rpow and neg", lambda xp, a, b, c, i, j: -(2.0 ** c)),
    ("maximum", lambda xp, a, b, c, i, j: xp.maximum(a, c)),
    ("where", lambda xp, a, b, c, i, j: xp.where(a > 0, a, -xp.inf)),
    ("matmul batched", lambda xp, a, b, c, i, j: a @ b),
    ("matmul 1-D right", lambda xp, a, b, c, i, j: a @ b[:, 0]),
    ("matmul 1-D left", lambda xp, a, b, c, i, j: b[:, 0] @ b),
    ("matmul batch broadcast", lambda xp, a, b, c, i, j: a[:, None] @ a.swapaxes(-1, -2)[None]),
    ("np.matmul float16 x float64", lambda xp, a, b, c, i, j: np.matmul(c, b[:1])),
    ("sum all", lambda xp, a, b, c, i, j: a.sum()),
    ("sum axis keepdims", lambda xp, a, b, c, i, j: a.sum(axis=-1, keepdims=True)),
    ("mean tuple axis", lambda xp, a, b, c, i, j: a.mean(axis=(0, 2))),
    ("mean of ints", lambda xp, a, b, c, i, j: i.mean(axis=0)),
    ("sum dtype", lambda xp, a, b, c, i, j: c.sum(axis=0, dtype=np.float32)),
    ("max argmax", lambda xp, a, b, c, i, j: a.max(axis=1) + a.argmax(axis=1)),
    ("np.sum np.max", lambda xp, a, b, c, i, j: np.sum(a, axis=1) - np.max(a, axis=1, keepdims=False)),
    ("reshape -1", lambda xp, a, b, c, i, j: a.reshape(-1, 2)),
    ("reshape tuple", lambda xp, a, b, c, i, j: a.reshape((6, 4))),
    ("transpose axes", lambda xp, a, b, c, i, j: a.transpose(2, 0, 1)),
    ("T", lambda xp, a, b, c, i, j: b.T),
    ("swapaxes", lambda xp, a, b, c, i, j: a.swapaxes(0, -1)),
    ("transpose then reshape", lambda xp, a, b, c, i, j: a.transpose(0, 2, 1).reshape(2, 12)),
    ("slice", lambda xp, a, b, c, i, j: a[1:, ::2, -3:]),
    ("int and None", lambda xp, a, b, c, i, j: a[0, None, :, 1]),
    ("ellipsis", lambda xp, a, b, c, i, j: a[..., 1:3]),
    ("negative step", lambda xp, a, b, c, i, j: b[::-2]),
    ("fancy first axis", lambda xp, a, b, c, i, j: b[i]),
    ("fancy adjacent", lambda xp, a, b, c, i, j: a[:, i % 3, j]),
    ("fancy separated", lambda xp, a, b, c, i, j: a[i % 2, :, j]),
    ("fancy with int", lambda xp, a, b, c, i, j: a[1, :, j]),
    ("row gather", lambda xp, a, b, c, i, j: b[xp.arange(2), j]),
    ("concatenate", lambda xp, a, b, c, i, j: xp.concatenate([a, a[:1]], axis=0)),
    ("np.concatenate axis=-1", lambda xp, a, b, c, i, j: np.concatenate([a, a], axis=-1)),
    ("stack", lambda xp, a, b, c, i, j: xp.stack([a, a, a], axis=1)),
    ("split", lambda xp, a, b, c, i, j: xp.split(a, 2, axis=2)[1]),
    ("array_split", lambda xp, a, b, c, i, j: np.array_split(b, 3)[2]),
    ("astype", lambda xp, a, b, c, i, j: a.astype(np.float16)),
    ("zeros ones full", lambda xp, a, b, c, i, j: xp.zeros((2, 3)) + xp.ones(3, dtype=np.float32)
     + xp.full((1, 3), 2, dtype=np.int32)),
    ("zeros_like", lambda xp, a, b, c, i, j: xp.zeros_like(c)),
    ("tril of ones", lambda xp, a, b, c, i, j: xp.tril(xp.ones((3, 3), dtype=bool))),
    ("squeeze", lambda xp, a, b, c, i, j: c.squeeze()),
    ("expand_dims", lambda xp, a, b, c, i, j: xp.expand_dims(b, 1)),
    ("ravel", lambda xp, a, b, c, i, j: a.ravel()),
    ("in place", lambda xp, a, b, c, i, j: _inplace(a)),
    ("random", lambda xp, a, b, c, i, j: xp.random.default_rng(0).normal(0.0, 1.0, size=(3, 2))),
    ("arange float", lambda xp, a, b, c, i, j: xp.arange(0.5, 3.2, 0.25)),
    ("arange int", lambda xp, a, b, c, i, j: xp.arange(7) + xp.arange(2, 9)),
    ("np.maximum.reduce", lambda xp, a, b, c, i, j: np.maximum.reduce(a, axis=1)),
    ("np.add.reduce keepdims", lambda xp, a, b, c, i, j: np.add.reduce(a, axis=(0, 2), keepdims=True)),
    ("setitem broadcast", lambda xp, a, b, c, i, j: _setitem(a, c)),
]


def _setitem(a, c):
    a = a.copy()
    a[:, :, 1:2] = c[None]  # (1, 3, 1) into (2, 3, 1)
    a[0] = a[1]
    return a


def _inplace(a):
    a = a.copy()
    a += 1.0
    a *= a
    a[0, :, 1:] -= 2.0
    return a


def _meta_args(dev):
    return [dev.asarray(x) for x in (A, B, C, I, J)]


@pytest.mark.parametrize("name, f", CASES, ids=[c[0] for c in CASES])
def test_shapes_and_dtypes_equal_numpys(name, f):
    ref = f(np, A, B, C, I, J)
    dev = Meta()
    out = f(dev, *_meta_args(dev))
    assert isinstance(out, MetaArray)
    assert (out.shape, out.dtype) == (np.shape(ref), np.asarray(ref).dtype), name


@pytest.mark.parametrize("f, view", [
    (lambda a: a.reshape(6, 4), True), (lambda a: a.transpose(1, 0, 2), True), (lambda a: a[1:, :, 0], True),
    (lambda a: a.T.reshape(-1), False), (lambda a: a.transpose(0, 2, 1).reshape(2, 12), False),
    (lambda a: a[[0, 1]], False), (lambda a: a.astype(np.float32, copy=False), True),
    (lambda a: a.astype(np.float64, copy=False), False),
    (lambda a: a.transpose(1, 0, 2).reshape(3, 2, 2, 2), True),  # splitting a transposed axis: still a view
    (lambda a: a.transpose(1, 0, 2).reshape(3, 8), False), (lambda a: a[:, ::2].reshape(-1), False),
    (lambda a: a[:, :, ::2].reshape(2, 3, 1, 2), True), (lambda a: a[..., None, 1:].squeeze(), True),
    (lambda a: np.broadcast_to(a[:, :1], (2, 3, 4)), True),
])
def test_views_allocate_nothing_and_copies_do_as_numpy(f, view):
    assert np.shares_memory(f(A), A) == view  # NumPy's answer
    dev = Meta()
    a = dev.asarray(A)
    before = dev.memory.allocated
    out = f(a)
    assert dev.may_share_memory(out, a) == view
    assert dev.memory.allocated - before == (0 if view else out.nbytes)
    assert (out.shape, out.strides, out.flags.c_contiguous) == (f(A).shape, f(A).strides, f(A).flags.c_contiguous)


def test_split_qkv_and_merge_heads_are_views_and_copies_as_in_numpy():
    from mlscale.nn.attention import merge_heads, split_qkv

    x = np.zeros((2, 5, 3 * 8), np.float32)
    q, k, v = split_qkv(x, 2)
    y = q @ k.swapaxes(-1, -2) @ v  # (batch, heads, seq, head_dim), a new array as attention's output
    assert np.shares_memory(q, x) and not np.shares_memory(merge_heads(y), y)  # NumPy
    assert np.shares_memory(merge_heads(q), x)  # (q's heads sit side by side in qkv: NumPy views them)
    dev = Meta()
    mx = dev.asarray(x)
    mq, mk, mv = split_qkv(mx, 2)
    assert (mq.shape, mk.shape, mv.shape) == (q.shape, k.shape, v.shape) and dev.may_share_memory(mq, mx)
    assert dev.may_share_memory(merge_heads(mq), mx)  # the same view on meta
    my = mq @ mk.swapaxes(-1, -2) @ mv
    before = dev.memory.allocated
    m = merge_heads(my)
    assert m.shape == (2, 5, 8) and not dev.may_share_memory(m, my) and dev.memory.allocated - before == m.nbytes
    assert m.base.shape == merge_heads(y).base.shape  # the copy is made in the transposed shape, as NumPy does


@pytest.mark.parametrize("what, f", [
    ("float(x)", lambda x: float(x.sum())),
    ("bool(x)", lambda x: (x > 0).any() and 1),
    ("x.item()", lambda x: x.item()),
    ("np.asarray(x)", lambda x: np.asarray(x)),
    ("int(x)", lambda x: int(x[0, 0, 0])),
    ("boolean mask", lambda x: x[x > 0]),
])
def test_values_raise_a_clear_error(what, f):
    x = Meta().asarray(A)
    with pytest.raises(ShapeOnlyError, match="shape-only arrays have no values") as e:
        f(x)
    assert what.split("(")[0].split()[0] in str(e.value) or what == "boolean mask" and "boolean mask" in str(e.value)


def test_unsupported_numpy_function_is_named():
    with pytest.raises(ShapeOnlyError, match="np.linalg|np.svd|not supported"):
        np.fft.fft(Meta().asarray(B))


def test_shape_errors_match_numpy():
    dev = Meta()
    with pytest.raises(ValueError, match="mismatch in its core dimension"):
        dev.asarray(A) @ dev.asarray(A)
    with pytest.raises(ValueError, match="cannot reshape"):
        dev.asarray(A).reshape(5, -1)
    for target in (A.copy(), dev.asarray(A)):  # NumPy and meta refuse the same assignment
        with pytest.raises(ValueError, match="could not broadcast"):
            target[:, 0] = np.zeros((3, 1))
        target[:, 0] = np.zeros((1, 1, 4))  # leading axes of length 1 are dropped
    with pytest.raises(ValueError):
        dev.asarray(A) + dev.asarray(B)
    i = dev.asarray(I)
    with pytest.raises(TypeError, match="Cannot cast ufunc 'add' output"):  # NumPy: int += float fails
        i += 0.5
    with pytest.raises(TypeError, match="Cannot cast ufunc 'add' output"):
        J.copy().__iadd__(0.5)


def test_flops_and_bytes_of_a_matmul_and_an_elementwise_op():
    dev = Meta()
    m, k, n = 7, 11, 13
    a, b = dev.zeros((3, m, k), np.float32), dev.zeros((k, n), np.float32)
    dev.costs.__init__()
    c = a @ b
    assert dev.costs.flops["matmul"] == 3 * 2 * m * k * n
    assert dev.costs.bytes["matmul"] == 4 * (3 * m * k + k * n + 3 * m * n)
    c * 2.0
    assert dev.costs.flops["elementwise"] == c.size and dev.costs.bytes["elementwise"] == 2 * c.nbytes
    c.sum(axis=0)
    assert dev.costs.flops["reduction"] == c.size and dev.costs.bytes["reduction"] == c.nbytes + m * n * 4


CFG = GPTConfig(vocab_size=13, seq_len=10, d_model=16, num_heads=2, num_layers=3)


@pytest.mark.parametrize("cfg", [CFG, GPTConfig(**{**CFG.__dict__, "tie_embeddings": True}),
                                 GPTConfig(**{**CFG.__dict__, "recompute": "full"}),
                                 GPTConfig(**{**CFG.__dict__, "recompute": "selective", "norm": "rmsnorm"})],
                         ids=["plain", "tied", "full-recompute", "selective-rmsnorm"])
def test_gpt_step_flops_on_meta_equal_model_flops(cfg):
    dev = Meta()
    model = GPT(cfg, dtype=np.float32, xp=dev)
    b = 4
    idx = np.zeros((b, cfg.seq_len), np.int64)
    dev.costs.__init__()
    model.forward(idx)
    fwd = dev.costs.flops["matmul"] + dev.costs.flops["attention"]
    assert fwd == model_flops(cfg, b * cfg.seq_len) // 3
    dev.costs.__init__()
    model.loss_and_grad(idx, idx)
    recompute = sum(blk.recompute_flops for blk in model.blocks)
    assert dev.costs.flops["matmul"] + dev.costs.flops["attention"] == model_flops(cfg, b * cfg.seq_len) + recompute
    assert (recompute > 0) == (cfg.recompute is not None)
    # the attention core is its own class: Q K^T and P V, 4 b s^2 h per layer forward, x 3
    s, L = cfg.seq_len, cfg.num_layers
    extra = {None: 0, "selective": 2 * b * s * s * cfg.d_model * L,  # Q K^T again
             "full": 4 * b * s * s * cfg.d_model * L}[cfg.recompute]  # the whole forward again
    assert dev.costs.flops["attention"] == 12 * L * cfg.d_model * s * b * s + extra


def test_gpt_forward_backward_adam_runs_unchanged_on_meta_and_keeps_numpys_shapes():
    cfg = CFG
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 13, (4, 10)), rng.integers(0, 13, (4, 10))
    real = GPT(cfg, seed=0, dtype=np.float32)
    dev = Meta("A100-80GB-SXM")
    meta = GPT(cfg, seed=0, dtype=np.float32, xp=dev)
    assert type(meta.params) is MetaArray and type(meta.grads) is MetaArray
    assert real.loss_and_grad(idx, tgt) > 0
    assert np.isnan(meta.loss_and_grad(idx, tgt))  # no values, but every op done and counted
    for lr, lm in zip(real.layers, meta.layers):  # what each layer keeps for backward: same shapes, dtypes
        sr, sm = saved_arrays(lr), saved_arrays(lm)
        def shapes(saved):
            return sorted((a.shape, a.dtype.str) for a in saved.values())
        assert shapes(sr) == shapes(sm)
    opt_r, opt_m = Adam(real, lr=1e-3), Adam(meta, lr=1e-3)
    opt_r.step(), opt_m.step()
    assert type(opt_m.m) is MetaArray and opt_m.m.shape == opt_r.m.shape
    n = meta.num_params
    assert dev.costs.bytes["elementwise"] >= 7 * 4 * n  # the fused Adam pass: p, g, m, v read; p, m, v written
    assert dev.costs.seconds > 0
    with pytest.raises(ShapeOnlyError, match="no values"):
        float(meta.forward(idx).mean())


def test_memory_by_kind_and_peak_equal_an_analytic_count():
    """MLP [8, 16, 4] in float64, batch b: params = grads = N * 8 bytes; forward keeps
    x, ReLU's mask and output; the peak is while ReLU runs (x, h1, mask, relu(h1))."""
    dev = Meta()
    b = 5
    model = MLP([8, 16, 4], dtype=np.float64, xp=dev)
    n = model.num_params
    assert n == 8 * 16 + 16 + 16 * 4 + 4
    assert dev.memory.live == {"params": 8 * n, "grads": 8 * n, "optimizer": 0, "activations": 0}
    x = dev.zeros((b, 8), np.float64)
    dev.memory.reset_peak()
    out = model.forward(x)
    act = 8 * b * 8 + 8 * b * 16 + b * 16 + 8 * b * 16  # x, h1 (freed after ReLU), mask (bool), relu(h1)
    assert dev.memory.peak == 16 * n + act
    assert dev.memory.at_peak["activations"] == act
    assert dev.memory.live["activations"] == act - 8 * b * 16 + out.nbytes  # h1 freed, out held
    assert dev.memory.live["activations"] == sum(saved_nbytes(layer) for layer in model.layers) + out.nbytes
    opt = Adam(model)
    assert dev.memory.live["optimizer"] == 2 * 8 * n and dev.memory.peak_by_kind["optimizer"] == 16 * n
    sgd = SGD(model, lr=0.1, momentum=0.9)
    assert dev.memory.live["optimizer"] == 3 * 8 * n
    del opt, sgd
    assert dev.memory.live["optimizer"] == 0  # freed with the optimizers


def test_gpt_activation_bytes_equal_the_real_runs():
    cfg = CFG
    idx = np.zeros((3, 10), np.int64)
    real = GPT(cfg, dtype=np.float16)
    real.forward(idx)
    dev = Meta()
    meta = GPT(cfg, dtype=np.float16, xp=dev)
    logits = meta.forward(dev.asarray(idx))
    assert sum(saved_nbytes(layer) for layer in meta.layers) == sum(saved_nbytes(layer) for layer in real.layers)
    kept = sum(saved_nbytes(layer) for layer in meta.layers) + logits.nbytes
    assert dev.memory.live["activations"] == kept
    assert dev.memory.live["params"] == 2 * meta.num_params


def test_out_of_memory_is_worded_like_cuda():
    dev = Meta("T4")
    a = dev.zeros((2 ** 31,), np.float32)  # 8 GiB
    with pytest.raises(OutOfMemoryError, match=r"CUDA out of memory\. Tried to allocate 10\.00 GiB \(GPU 0; "
                                               r"16\.00 GiB total capacity; 8\.00 GiB already allocated"):
        dev.empty((10 * 2 ** 28,), np.float32)
    assert dev.memory.allocated == a.nbytes  # the failed allocation counts nothing
    big = GPTConfig(vocab_size=50257, seq_len=2048, d_model=4096, num_heads=32, num_layers=32)
    V, s, d, L = 50257, 2048, 4096, 32
    n = V * d + s * d + L * (4 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 4 * d + d) + 2 * d + d * V
    assert n == matmul_params(big) + s * d + V * d + L * 13 * d + 2 * d  # + wpe, wte, biases and norms
    with pytest.raises(OutOfMemoryError, match=rf"Tried to allocate {4 * n / 2**30:.2f} GiB \(GPU 0; 16.00 GiB "
                                               r"total capacity; 0.00 GiB already allocated.*params array"):
        GPT(big, dtype=np.float32, xp=Meta("T4"))  # 6.7 B parameters: 25 GiB of fp32 weights alone


def _dp_program(comm, meta):
    dev = Meta("H100-SXM", comm=comm) if meta else None
    model = GPT(CFG, dtype=np.float32, xp=dev)
    opt = Adam(model)
    idx = np.random.default_rng(comm.rank).integers(0, 13, (4, 10))
    model.loss_and_grad(idx, idx)
    g = comm.all_reduce(model.grads, op="mean", algorithm="ring")
    rs = comm.reduce_scatter(model.grads[:96], algorithm="ring")
    opt.step(g)
    return comm.clock, (dev.costs.seconds if meta else 0.0), type(g).__name__, rs.shape


def test_data_parallel_step_on_sim_sends_the_real_runs_messages():
    real = ms.launch(_dp_program, world_size=2, args=(False,))
    meta = ms.launch(_dp_program, world_size=2, args=(True,))
    key = [(m.src, m.dst, m.nbytes, m.tag, m.label) for m in real.trace.messages]
    assert key == [(m.src, m.dst, m.nbytes, m.tag, m.label) for m in meta.trace.messages]
    assert sum(m.nbytes for m in meta.trace.messages) == 2 * 2 * (1 / 2) * GPT(CFG).nbytes + 2 * 48 * 4
    for (t_real, _, kind_r, rs_r), (t_meta, compute, kind_m, rs_m) in zip(real, meta):
        assert (kind_r, kind_m, rs_r) == ("ndarray", "MetaArray", rs_m)
        assert t_meta == pytest.approx(t_real + compute, rel=1e-12)  # symmetric ranks: compute adds up
    assert {s.label for s in meta.trace.spans} >= {"matmul", "attention", "elementwise"}


def _keys(res):
    return [(m.src, m.dst, m.nbytes, m.tag, m.label) for m in res.trace.messages]


def _collectives(comm, meta, p):
    dev = Meta(comm=comm) if meta else None
    x = np.arange(7 * p + 3, dtype=np.float32) + comm.rank  # a length p does not divide
    x = dev.asarray(x) if meta else x
    out = []
    for algo in (None, "ring", "recursive_doubling", "rabenseifner", "tree", "naive"):
        out.append(comm.all_reduce(x, algorithm=algo))
    for algo in (None, "ring", "recursive_halving", "naive"):
        out.append(comm.reduce_scatter(x, algorithm=algo))
    for algo in (None, "ring", "recursive_doubling", "naive"):
        out.append(comm.all_gather(x[:5], algorithm=algo))
    out.append(comm.broadcast(x, root=1))
    out.append(comm.reduce(x, root=2, op="max"))
    pieces = [x[:3] * 1.0 for _ in range(p)]
    for algo in (None, "pairwise", "bruck"):
        out += comm.all_to_all(pieces, algorithm=algo)
    return [None if o is None else (o.shape, o.dtype.str, type(o).__name__) for o in out]


@pytest.mark.parametrize("p", [3, 4])
def test_collectives_move_meta_arrays_with_the_real_messages(p):
    real = ms.launch(_collectives, world_size=p, args=(False, p))
    meta = ms.launch(_collectives, world_size=p, args=(True, p))
    assert _keys(real) == _keys(meta) and len(_keys(real)) > 50
    for r, m in zip(real, meta):
        assert [o and o[:2] for o in r] == [o and o[:2] for o in m]
        assert {o[2] for o in m if o} == {"MetaArray"}


def _tp_step(comm, meta, sp):
    from mlscale.parallel.three_d import tp_gpt

    cfg = GPTConfig(vocab_size=13, seq_len=8, d_model=16, num_heads=4, num_layers=2)
    dev = Meta("A100-80GB-SXM", comm=comm) if meta else None
    model = tp_gpt(comm, cfg, sequence_parallel=sp, dtype=np.float32, xp=dev)
    idx = np.zeros((2, 8), np.int64)
    model.loss_and_grad(idx, idx)
    for layer in model.layers:
        if hasattr(layer, "sync_grads"):
            layer.sync_grads()
    return comm.clock, dev.costs.seconds if meta else 0.0


@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp+sp"])
def test_tensor_parallel_gpt_on_meta_sends_the_real_runs_messages(sp):
    real = ms.launch(_tp_step, world_size=2, args=(False, sp))
    meta = ms.launch(_tp_step, world_size=2, args=(True, sp))
    assert _keys(real) == _keys(meta) and len(_keys(real)) >= 32
    for (t_real, _), (t_meta, compute) in zip(real, meta):
        assert t_meta == pytest.approx(t_real + compute, rel=1e-9)


def _pipeline_step(comm, meta, schedule):
    from mlscale.parallel.pipeline import PipelineParallel

    cfg = GPTConfig(vocab_size=13, seq_len=8, d_model=16, num_heads=4, num_layers=4)
    dev = Meta("A100-80GB-SXM", comm=comm) if meta else None
    pipe = PipelineParallel(comm, GPT(cfg, dtype=np.float32, xp=dev), 4, schedule, times=(0.0, 0.0))
    x = np.zeros((8, 8), np.int64)
    dev and dev.memory.reset_peak()
    pipe.step(x, x)
    return dev.memory.at_peak["activations"] if meta else 0


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_on_meta_sends_the_real_runs_messages(schedule):
    real = ms.launch(_pipeline_step, world_size=2, args=(False, schedule))
    meta = ms.launch(_pipeline_step, world_size=2, args=(True, schedule))
    # the same messages; their order in time differs: the meta run spends roofline compute time
    assert sorted(_keys(real)) == sorted(_keys(meta)) and len(_keys(real)) == 2 * 4
    assert all(a > 0 for a in meta)


def test_one_f_one_b_holds_fewer_activations_than_gpipe_on_meta():
    gpipe = ms.launch(_pipeline_step, world_size=2, args=(True, "gpipe"))
    f1b = ms.launch(_pipeline_step, world_size=2, args=(True, "1f1b"))
    # 4 micro-batches in flight under GPipe; at most p - stage under 1F1B (Narayanan et al. 2021)
    assert f1b[0] < gpipe[0] and f1b[1] < gpipe[1] and f1b[1] < f1b[0]


def test_xp_meta_string_and_summary():
    model = GPT(CFG, dtype=np.float32, xp="meta")
    dev = model.xp
    assert isinstance(dev, Meta) and dev.hardware is None and GPT(CFG, xp="meta").xp is not dev  # one per model
    model.loss_and_grad(np.zeros((2, 10), np.int64), np.zeros((2, 10), np.int64))
    assert dev.costs.seconds == 0 and dev.costs.flops["matmul"] > 0  # no hardware: counts only
    text = dev.summary()
    assert f"{dev.costs.flops['matmul']:.4g} FLOPs" in text and f"params {4 * model.num_params / 2**30:.3f}" in text


def test_an_array_of_no_device_says_how_to_fix_it():
    orphan = Meta().asarray(A).wire()  # what a message is on the wire
    with pytest.raises(ShapeOnlyError, match=r"Meta\(hardware, comm=comm\)"):
        orphan + 1.0


def _zero_step(comm, meta):
    from mlscale.parallel.zero import ZeroOptimizer

    cfg = GPTConfig(vocab_size=13, seq_len=8, d_model=16, num_heads=4, num_layers=2)
    dev = Meta("A100-80GB-SXM", comm=comm) if meta else None
    model = GPT(cfg, dtype=np.float32, xp=dev)
    opt = ZeroOptimizer(comm, model.params, lambda shard: Adam(shard, lr=1e-3))
    x = np.zeros((2, 8), np.int64)
    model.loss_and_grad(x, x)
    opt.step(model.grads)
    return (dev.memory.live["optimizer"] if meta else None), model.num_params


def test_zero_stage_1_on_meta_keeps_one_shard_of_adam_state_and_the_real_messages():
    real = ms.launch(_zero_step, world_size=3, args=(False,))
    meta = ms.launch(_zero_step, world_size=3, args=(True,))
    assert sorted(_keys(real)) == sorted(_keys(meta))
    n = meta[0][1]
    shards = [len(c) for c in np.array_split(np.arange(n), 3)]
    assert [opt for opt, _ in meta] == [2 * 4 * s for s in shards]  # m and v of my 1/N (Rajbhandari et al. 2020)


def _run(fuse, f, *shapes_dtypes):
    dev = Meta("A100-80GB-SXM", record=True, fuse=fuse)
    args = [dev.zeros(s, d) for s, d in shapes_dtypes]
    dev.costs.__init__()
    dev.oplog.clear()
    out = f(*args)
    return dev, args, out


def test_a_fused_function_is_charged_as_one_kernel_its_inputs_and_outputs():
    from mlscale.nn.transformer import gelu_forward

    shape = ((4, 10, 64), np.float16)
    fused, (x,), y = _run(True, gelu_forward, shape)
    eager, _, _ = _run(False, gelu_forward, shape)
    assert fused.costs.ops == 1 and eager.costs.ops > 5
    assert fused.costs.total_flops == eager.costs.total_flops  # the same work ...
    assert fused.costs.total_bytes == x.nbytes + y.nbytes < eager.costs.total_bytes / 4  # ... one pass over memory
    hw = fused.hardware
    assert fused.costs.seconds == pytest.approx(hw.op_time("elementwise", fused.costs.total_flops,
                                                           x.nbytes + y.nbytes, np.float32), rel=1e-12)


def test_fused_layernorm_reads_x_and_its_parameters_and_writes_y_and_the_statistics():
    from mlscale.nn.norms import layernorm_forward

    dev, (x, w, b), (y, cache) = _run(True, layernorm_forward, ((3, 7, 32), np.float16), ((32,), np.float16),
                                      ((32,), np.float16))
    assert dev.costs.ops == 1
    assert dev.costs.total_bytes == x.nbytes + w.nbytes + b.nbytes + y.nbytes + cache[1].nbytes + cache[2].nbytes


def test_fused_softmax_reads_the_scores_its_matmul_wrote():
    from mlscale.nn.attention import _probs

    b, h, s, d = 2, 3, 16, 8
    dev, (q, k), p = _run(True, lambda q, k: _probs(q, k, True), ((b, h, s, d), np.float32), ((b, h, s, d), np.float32))
    (mm_op, mm_cls, mm_flops, mm_bytes, _), (sm_op, sm_cls, _, sm_bytes, _) = dev.oplog
    assert (mm_op, mm_cls, sm_op, sm_cls) == ("matmul", "matmul", "softmax", "elementwise")
    assert mm_flops == 2 * b * h * s * s * d and mm_bytes == q.nbytes + k.nbytes + p.nbytes
    assert sm_bytes == 2 * p.nbytes  # S read back, P written; the mask and temporaries stay on chip


def _fsdp_step(comm, meta, stage):
    from mlscale.parallel.fsdp import FSDP

    cfg = GPTConfig(vocab_size=13, seq_len=8, d_model=16, num_heads=4, num_layers=2)
    dev = Meta("A100-80GB-SXM", comm=comm) if meta else None
    fsdp = FSDP(comm, GPT(cfg, dtype=np.float32, xp=dev), lambda shard: Adam(shard, lr=1e-3), stage=stage)
    x = np.zeros((2, 8), np.int64)
    fsdp.loss_and_grad(x, x)
    fsdp.step()
    return comm.clock


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fsdp_stages_on_meta_send_the_real_runs_messages(stage):
    real = ms.launch(_fsdp_step, world_size=2, args=(False, stage))
    meta = ms.launch(_fsdp_step, world_size=2, args=(True, stage))
    assert sorted(_keys(real)) == sorted(_keys(meta)) and len(_keys(real)) >= 20
    assert all(t_meta > t_real for t_real, t_meta in zip(real, meta))  # plus the roofline compute


def test_mixed_precision_on_meta_holds_16_bytes_per_parameter():
    """fp16 params (2 B) and grads (2 B), fp32 master (4 B) and Adam m, v (8 B): ZeRO's 16 B
    per parameter (Rajbhandari et al. 2020; mlscale.nn.flops.model_state_bytes)."""
    from mlscale.nn.flops import model_state_bytes
    from mlscale.nn.precision import MixedPrecision

    dev = Meta("A100-80GB-SXM")
    fp32 = GPT(CFG, dtype=np.float32, xp=dev)
    n = fp32.num_params
    mp = MixedPrecision(fp32, "float16", lambda master: Adam(master, lr=1e-3))
    del fp32  # the float32 model the master weights were made from
    idx = np.zeros((2, 10), np.int64)
    assert np.isnan(mp.step(idx, idx)) and mp.skipped_steps == 0
    ref = model_state_bytes(n)
    live = dev.memory.live
    assert (live["params"], live["grads"]) == (ref["params"], ref["grads"])
    assert live["optimizer"] == ref["fp32_params"] + ref["adam_m"] + ref["adam_v"] == 12 * n
    assert mp.model.params.dtype == np.float16 and mp.master.dtype == np.float32


def test_a_real_array_as_out_of_a_shape_only_op_is_refused():
    from mlscale.meta import Meta, ShapeOnlyError

    xp = Meta()
    a = xp.zeros((3, 4))
    with pytest.raises(ShapeOnlyError, match=r"np.add: out= must be a shape-only array, got ndarray"):
        np.add(a, a, out=np.empty((3, 4)))
