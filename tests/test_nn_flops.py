"""Model FLOPs equal the matmul FLOPs the GPT does in a step (counted); MFU; the
Ultra-Scale Playbook's model-state table; 16 bytes per parameter with Adam."""
import numpy as np
import pytest

from mlscale.nn import (GPT, GPTConfig, bytes_per_param, matmul_params, mfu, model_flops, model_state_bytes,
                        model_state_table)
from tests.test_recompute import _count_matmul_flops


@pytest.mark.parametrize("tied", [False, True])
def test_model_flops_equal_the_counted_matmul_flops_of_a_step(tied, monkeypatch):
    cfg = GPTConfig(vocab_size=13, seq_len=10, d_model=16, num_heads=2, num_layers=3, tie_embeddings=tied)
    model = GPT(cfg, seed=0, dtype=np.float64)
    count = _count_matmul_flops(monkeypatch)
    rng = np.random.default_rng(0)
    b = 4
    model.loss_and_grad(rng.integers(0, 13, (b, 10)), rng.integers(0, 13, (b, 10)))
    assert count[0] == model_flops(cfg, tokens=b * 10)
    assert count[0] == b * model.flops_per_sample()
    n = matmul_params(cfg)
    assert n == 3 * (4 * 16 * 16 + 2 * 16 * 64) + 16 * 13
    blocks_and_head = sum(s.stop - s.start for s in model.slots if s.name.split(".")[-1] == "weight"
                          and ("attn" in s.name or "mlp" in s.name or s.layer == len(model.layers) - 1))
    assert n == blocks_and_head + (16 * 13 if tied else 0)  # tied: the head reuses wte (13 x 16)


def test_mfu():
    cfg = GPTConfig(vocab_size=100, seq_len=64, d_model=64, num_heads=4, num_layers=2)
    per_token = 6 * matmul_params(cfg) + 12 * 2 * 64 * 64
    assert model_flops(cfg, 1) == per_token
    assert mfu(cfg, tokens_per_second=1000, peak_flops=per_token * 4000) == pytest.approx(0.25)
    assert mfu(cfg, 1000, per_token * 1000, num_devices=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(cfg, 1000, 0)


def test_the_playbook_model_state_table():
    table = {name: (gb, gb_acc) for name, _, gb, gb_acc in model_state_table()}
    assert table == {"1B": (16, 20), "7B": (112, 140), "70B": (1120, 1400), "405B": (6480, 8100)}
    parts = model_state_bytes(10)
    assert (parts["params"], parts["grads"], parts["fp32_params"] + parts["adam_m"] + parts["adam_v"]) == (20, 20, 120)
    assert bytes_per_param() == 16 and bytes_per_param(fp32_grad_accum=True) == 20
