"""Activation recomputation (Korthikanti et al. 2022): gradients bitwise equal to none;
the activation bytes a block keeps, measured, equal the paper's formula adjusted for
what this implementation keeps (no dropout; norm statistics); the recomputed FLOPs are
exactly the extra matmul FLOPs counted during backward."""
import numpy as np
import pytest

from mlscale import nn
from mlscale.nn import GPT, GPTConfig, activation_bytes_per_layer, saved_nbytes

CFG = dict(vocab_size=11, seq_len=12, d_model=16, num_heads=4, num_layers=2)


def _batch(b=3, s=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 11, (b, s)), rng.integers(0, 11, (b, s))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_gradients_bitwise_equal_to_no_recomputation(recompute, dtype):
    idx, tg = _batch()
    ref = GPT(GPTConfig(**CFG), seed=0, dtype=dtype)
    got = GPT(GPTConfig(**CFG, recompute=recompute), seed=0, dtype=dtype)
    assert ref.loss_and_grad(idx, tg) == got.loss_and_grad(idx, tg)
    np.testing.assert_array_equal(got.grads, ref.grads)
    assert got.grads.any()


@pytest.mark.parametrize("norm, stats", [("layernorm", 2), ("rmsnorm", 1)])
@pytest.mark.parametrize("recompute", [None, "selective", "full"])
def test_block_activation_bytes_equal_the_formula(recompute, norm, stats):
    """16-bit activations: measured = Korthikanti's formula without dropout
    (34 -> 32 s b h: no dropout masks; 5 a s^2 b -> 2 a s^2 b: no softmax dropout mask
    or output), plus the norms' per-row statistics (mean and rstd: 2 s b values per
    LayerNorm, rstd only for RMSNorm), which the formula leaves out."""
    b, s, h, a = 3, 12, 16, 4
    model = GPT(GPTConfig(**CFG, norm=norm, recompute=recompute), seed=0, dtype=np.float16)
    block = model.blocks[0]
    block.forward(np.random.default_rng(0).standard_normal((b, s, h)).astype(np.float16))
    formula = activation_bytes_per_layer(s, b, h, a, recompute, dropout=False, bytes_per_value=2)
    norm_stats = 0 if recompute == "full" else 2 * (2 * stats * s * b)  # two norms, 2 bytes per value
    assert saved_nbytes(block) == formula + norm_stats
    paper = activation_bytes_per_layer(s, b, h, a, recompute)  # with dropout, as published
    assert paper == {None: s * b * h * (34 + 5 * a * s / h), "selective": 34 * s * b * h, "full": 2 * s * b * h}[recompute]
    assert paper - formula == {None: 2 * s * b * h + 3 * a * s * s * b, "selective": 2 * s * b * h, "full": 0}[recompute]


def test_the_bytes_kept_free_after_backward():
    model = GPT(GPTConfig(**CFG, recompute="full"), seed=0, dtype=np.float32)
    idx, tg = _batch()
    model.forward(idx)
    assert all(saved_nbytes(bl) == 3 * 12 * 16 * 4 for bl in model.blocks)  # only the block input
    model.loss_and_grad(idx, tg)
    assert all(saved_nbytes(bl) == 0 for bl in model.blocks)


def _count_matmul_flops(monkeypatch):
    """Patch the matmuls the GPT uses to count their FLOPs (2 m n k each)."""
    from mlscale.nn import attention, embedding

    count = [0]
    real_mm, real_probs = attention.matmul, attention._probs

    def mm(x, y):
        count[0] += 2 * int(np.prod(x.shape[:-1])) * x.shape[-1] * y.shape[-1]
        return real_mm(x, y)

    def probs(q, k, causal):
        count[0] += 2 * int(np.prod(q.shape[:-1])) * q.shape[-1] * k.shape[-2]  # Q K^T
        return real_probs(q, k, causal)

    for mod in (attention, embedding):
        monkeypatch.setattr(mod, "matmul", mm)
    monkeypatch.setattr(attention, "_probs", probs)
    return count


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recompute_flops_are_the_extra_matmul_flops(recompute, monkeypatch):
    count = _count_matmul_flops(monkeypatch)
    idx, tg = _batch()
    base = GPT(GPTConfig(**CFG), seed=0, dtype=np.float64)
    base.loss_and_grad(idx, tg)
    plain, count[0] = count[0], 0
    model = GPT(GPTConfig(**CFG, recompute=recompute), seed=0, dtype=np.float64)
    model.loss_and_grad(idx, tg)
    extra = count[0] - plain
    b, s, h = 3, 12, 16
    assert extra == sum(bl.recompute_flops for bl in model.blocks) > 0
    per_block = 2 * b * s * s * h if recompute == "selective" else model.blocks[0].forward_flops(b, s)
    assert extra == 2 * per_block  # two blocks
    assert model.blocks[0].forward_flops(b, s) == 24 * b * s * h * h + 4 * b * s * s * h  # d_ff = 4 h


def test_bad_recompute_mode():
    with pytest.raises(ValueError, match="recompute"):
        activation_bytes_per_layer(4, 1, 8, 2, recompute="half")
    with pytest.raises(ValueError, match="recompute"):
        nn.GPTConfig(**CFG, recompute="everything")


def test_measure_activation_bytes_for_the_notebook():
    got = nn.measure_activation_bytes(GPTConfig(**CFG), batch=3)
    s, b, h = 12, 3, 16
    assert {m: v[0] - v[1] for m, v in got.items()} == {None: 2 * 2 * s * b * 2, "selective": 2 * 2 * s * b * 2,
                                                          "full": 0}
    assert got["full"][2] == 2 * s * b * h
