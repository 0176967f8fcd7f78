"""The GPT: every parameter's gradient and the input gradients against float64 central
differences; the functional pieces (attention core, norms) too; float32 equals float64;
training on the grammar corpus reaches a stated loss; a pipeline of GPT layers equals
one device; bad input raises."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn
from mlscale.nn import GPT, GPTConfig


def _cfg(**kw):
    base = dict(vocab_size=7, seq_len=5, d_model=8, num_heads=2, num_layers=2)
    base.update(kw)
    return GPTConfig(**base)


def _tokens(cfg, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len)), rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len))


def _num_grad(f, a, index, eps=1e-6):
    old = a[index]
    a[index] = old + eps
    up = f()
    a[index] = old - eps
    down = f()
    a[index] = old
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm"}, {"tie_embeddings": True}, {"bias": False, "d_ff": 12}])
def test_every_parameter_gradient_matches_central_differences(kw):
    cfg = _cfg(**kw)
    model = GPT(cfg, seed=3, dtype=np.float64)
    idx, tg = _tokens(cfg)
    model.loss_and_grad(idx, tg)
    grads = model.grads.copy()
    rng = np.random.default_rng(1)
    kinds = set()
    for s in model.slots:
        kinds.add(s.name.split(".", 1)[1])
        for j in rng.choice(s.stop - s.start, size=min(3, s.stop - s.start), replace=False):
            i = s.start + int(j)
            num = _num_grad(lambda: model.loss(idx, tg), model.params, i)
            assert abs(num - grads[i]) <= 1e-7 + 1e-5 * abs(num), (s.name, num, grads[i])
    assert "attn.qkv.weight" in kinds and "mlp.fc2.weight" in kinds and "wte" in kinds
    head = len(model.layers) - 1
    assert any(s.layer == head for s in model.slots) != cfg.tie_embeddings  # tied: the head has no weight


def test_a_token_sequence_shorter_than_seq_len_and_the_wpe_rows_it_uses():
    cfg = _cfg()
    model = GPT(cfg, seed=0, dtype=np.float64)
    idx, tg = _tokens(cfg)
    model.loss_and_grad(idx[:, :3], tg[:, :3])
    g = model.grads[model._slot("0.wpe").start:model._slot("0.wpe").stop].reshape(cfg.seq_len, cfg.d_model)
    assert np.abs(g[:3]).sum() > 0 and np.all(g[3:] == 0)


def _check_input_grad(forward, backward, x, seed=0):
    """loss = sum(forward(x) * R): backward(R) must equal its central differences in x."""
    r = np.random.default_rng(seed).standard_normal(forward(x).shape)
    forward(x)
    dx = backward(r)
    rng = np.random.default_rng(seed + 1)
    for _ in range(8):
        i = tuple(int(rng.integers(n)) for n in x.shape)
        num = _num_grad(lambda: float((forward(x) * r).sum()), x, i)
        assert abs(num - dx[i]) <= 1e-7 + 1e-6 * abs(num), (i, num, dx[i])


@pytest.mark.parametrize("recompute", [None, "selective", "full"])
def test_block_input_gradient(recompute):
    cfg = _cfg(recompute=recompute)
    model = GPT(cfg, seed=2, dtype=np.float64)
    block = model.blocks[0]
    x = np.random.default_rng(0).standard_normal((2, 5, 8))
    _check_input_grad(block.forward, block.backward, x)


def test_functional_attention_and_norms_input_gradients():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 4, 5)) for _ in range(3))
    r = rng.standard_normal((2, 3, 4, 5))
    y, cache = nn.attention_forward(q, k, v)
    dq, dk, dv = nn.attention_backward(r, cache)
    for a, da in ((q, dq), (k, dk), (v, dv)):
        for _ in range(5):
            i = tuple(int(rng.integers(n)) for n in a.shape)
            num = _num_grad(lambda: float((nn.attention_forward(q, k, v)[0] * r).sum()), a, i)
            assert abs(num - da[i]) <= 1e-8 + 1e-6 * abs(num)
    # causal: output row t does not depend on keys/values after t
    k2 = k.copy()
    k2[..., 3, :] += 1.0
    np.testing.assert_array_equal(nn.attention_forward(q, k2, v)[0][..., :3, :], y[..., :3, :])
    x = rng.standard_normal((3, 4, 6))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    for fwd, bwd, extra in ((nn.layernorm_forward, nn.layernorm_backward, (b,)), (nn.rmsnorm_forward, nn.rmsnorm_backward, ())):
        r = rng.standard_normal(x.shape)
        out, cache = fwd(x, w, *extra)
        grads = bwd(r, cache, w)
        for _ in range(5):
            i = tuple(int(rng.integers(n)) for n in x.shape)
            num = _num_grad(lambda: float((fwd(x, w, *extra)[0] * r).sum()), x, i)
            assert abs(num - grads[0][i]) <= 1e-8 + 1e-6 * abs(num)
        num_w = _num_grad(lambda: float((fwd(x, w, *extra)[0] * r).sum()), w, 2)
        assert abs(num_w - grads[1][2]) <= 1e-8 + 1e-6 * abs(num_w)


def test_float32_equals_float64_and_layernorm_normalises():
    cfg = _cfg()
    idx, tg = _tokens(cfg)
    m64, m32 = GPT(cfg, seed=0, dtype=np.float64), GPT(cfg, seed=0, dtype=np.float32)
    l64, l32 = m64.loss_and_grad(idx, tg), m32.loss_and_grad(idx, tg)
    assert abs(l64 - l32) < 1e-5
    np.testing.assert_allclose(m32.grads, m64.grads, rtol=1e-3, atol=1e-6)
    y, _ = nn.layernorm_forward(np.random.default_rng(0).standard_normal((4, 16)) * 5 + 3, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=-1), 1, rtol=1e-4)


def test_trains_on_the_grammar_corpus():
    """Stated: a 2-layer, d=32 GPT reaches a loss below 0.8 nats/char in 200 Adam steps
    (batch 16 x 32 chars; uniform guessing is log(25) = 3.22)."""
    text = data.grammar_text(20_000, seed=0)
    tok = data.CharTokenizer(text)
    ids = tok.encode(text)
    assert tok.vocab_size == 25 and tok.decode(ids[:40]) == text[:40]
    cfg = GPTConfig(vocab_size=tok.vocab_size, seq_len=32, d_model=32, num_heads=4, num_layers=2)
    model = GPT(cfg, seed=0, dtype=np.float32)
    opt = nn.Adam(model, lr=3e-3)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(200):
        x, y = data.lm_batch(ids, 16, 32, rng)
        losses.append(model.loss_and_grad(x, y))
        opt.step()
    assert losses[0] > 3.0
    assert np.mean(losses[-10:]) < 0.8, losses[-10:]


def test_pipeline_of_gpt_layers_equals_one_device():
    from mlscale.parallel import PipelineParallel, partition_layers

    cfg = _cfg(num_layers=3)
    idx, tg = _tokens(cfg, batch=4)
    ref = GPT(cfg, seed=0, dtype=np.float64)
    ref.loss_and_grad(idx, tg)
    assert partition_layers(ref.layers, 3) == [(0, 2), (2, 4), (4, 6)]

    def prog(comm):
        pipe = PipelineParallel(comm, GPT(cfg, seed=0, dtype=np.float64), num_microbatches=2)
        pipe.step(idx, tg)
        return pipe.stage.param_range, pipe.grads.copy()

    for (lo, hi), g in ms.launch(prog, 3):
        np.testing.assert_allclose(g, ref.grads[lo:hi], rtol=1e-10, atol=1e-13)


def test_copy_has_its_own_caches_and_tied_head():
    cfg = _cfg(tie_embeddings=True)
    model = GPT(cfg, seed=0, dtype=np.float64)
    twin = model.copy()
    assert twin.layers[-1].tied_to is twin.layers[0]
    assert twin.blocks[0].attn is not model.blocks[0].attn
    idx, tg = _tokens(cfg)
    assert twin.loss_and_grad(idx, tg) == model.loss_and_grad(idx, tg)
    np.testing.assert_array_equal(twin.grads, model.grads)


@pytest.mark.parametrize("make, match", [
    (lambda: GPTConfig(vocab_size=5, seq_len=4, d_model=10, num_heads=3, num_layers=1), "not divisible by num_heads"),
    (lambda: GPTConfig(vocab_size=5, seq_len=4, d_model=8, num_heads=2, num_layers=0), "num_layers"),
    (lambda: GPTConfig(vocab_size=5, seq_len=4, d_model=8, num_heads=2, num_layers=1, recompute="some"), "recompute"),
    (lambda: GPT(_cfg()).forward(np.zeros((2, 6), dtype=np.int64)), "longer than seq_len"),
    (lambda: GPT(_cfg()).forward(np.full((2, 3), 7)), r"\[0, 7\)"),
    (lambda: GPT(_cfg()).forward(np.zeros(3, dtype=np.int64)), r"\(batch, seq\)"),
    (lambda: GPT(_cfg()).forward(np.full((1, 2), 0.5)), "whole numbers"),
    (lambda: data.lm_batch(np.arange(4), 2, 8, np.random.default_rng(0)), "seq_len"),
    (lambda: data.CharTokenizer("abc").encode("abd"), "not in the vocabulary"),
])
def test_bad_input_raises_clearly(make, match):
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        make()
