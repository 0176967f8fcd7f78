"""mlscale bench train --model gpt: the sim rows follow from the virtual clocks (one
device computes all the time at MFU 1; parallel layouts spend time not computing, more
on a slower network), and the command prints every layout."""
import numpy as np
import pytest

from mlscale.bench import train as bt
from mlscale.bench import train_gpt as bg
from mlscale.nn import GPTConfig

CFG = GPTConfig(vocab_size=16, seq_len=8, d_model=16, num_heads=2, num_layers=2)


def test_sim_rows():
    data = bg.batches(CFG, 4, 2)
    tps1, idle1, mfu1 = bg.sim_row(CFG, data, (1, 1, 1), bg.NETWORKS["nvlink"], 1e12, 2)
    assert idle1 == pytest.approx(0.0, abs=1e-12) and mfu1 == pytest.approx(1.0, rel=1e-12)
    assert tps1 == pytest.approx(1e12 / (6 * (2 * (4 * 16 * 16 + 2 * 16 * 64) + 16 * 16) + 12 * 2 * 16 * 8), rel=1e-12)
    for dims in ((2, 1, 1), (1, 1, 2), (1, 2, 1)):
        fast = bg.sim_row(CFG, data, dims, bg.NETWORKS["nvlink"], 1e12, 2)
        slow = bg.sim_row(CFG, data, dims, bg.NETWORKS["ethernet"], 1e12, 2)
        assert 0 < fast[1] < slow[1] < 1 and slow[0] < fast[0] and slow[2] < fast[2] < 1


def test_command_prints_every_layout(capsys):
    assert bt.main(["--model", "gpt", "--quick", "--seq", "8", "--d-model", "16", "--heads", "2",
                    "--layers", "2", "--batch", "4", "--microbatches", "2"]) == 0
    out = capsys.readouterr().out
    for name in bg.LAYOUTS:
        assert f"| {name}" in out
    assert np.isfinite(float(out.split("| 1 device")[1].split("|")[4]))  # MFU column
