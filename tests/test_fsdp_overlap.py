"""FSDP on sim with a NetworkModel: prefetching the next unit's all-gather on the
communication stream shortens the (virtual) step; the stage table for notebook 12
(memory per rank measured = model, bytes per step = formula, ZeRO-3 = 1.5x DP); the
timeline figure."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlscale import nn  # noqa: E402
from mlscale.comm import NetworkModel  # noqa: E402
from mlscale.parallel import plot_fsdp_timeline, prefetch_step_times, run_step, zero_stages  # noqa: E402

CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=3)
NET = NetworkModel(alpha=1e-5, beta=1e-9, flops=1e9)


def make_model():
    return nn.GPT(CFG, seed=0, dtype=np.float64)


def _batch(b=16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 11, (b, 8)), rng.integers(0, 11, (b, 8))


def test_prefetch_hides_the_all_gathers():
    t = prefetch_step_times(make_model, _batch(), 4, NET)
    assert t["prefetch"] < 0.9 * t["no prefetch"]
    # what is hidden is communication: with free links both take the compute time alone
    free = prefetch_step_times(make_model, _batch(), 4, NetworkModel(alpha=0, beta=0, flops=1e9))
    assert free["prefetch"] == pytest.approx(free["no prefetch"], rel=1e-12)
    assert free["prefetch"] < t["prefetch"]
    # the same messages either way: only their timing moves
    (_, a), (_, b) = (run_step(make_model, _batch(), 4, 3, NET, prefetch=f, overlap=f) for f in (True, False))
    assert a.bytes_sent() == b.bytes_sent() and len(a) == len(b)


def test_zero_stages_table():
    rows = zero_stages(make_model, _batch(), 4)
    assert [r["stage"] for r in rows] == [0, 1, 2, 3]
    assert [r["wire_vs_dp"] for r in rows] == [1.0, 1.0, 1.0, 1.5]
    for r in rows:
        assert {k: r[k] for k in ("params", "grads", "optimizer")} == r["model"]
        assert r["wire"] == r["wire_formula"]
        assert r["peak_total"] <= r["params"] + r["grads"] + r["optimizer"]
    assert rows[0]["paper"] == rows[0]["peak_total"]  # stage 0: nothing in flight
    assert rows[1]["optimizer"] * 4 == rows[0]["optimizer"]  # m and v of 1/4 of the parameters
    assert rows[3]["paper"] * 4 == rows[0]["paper"]


def test_timeline_figure():
    axes = plot_fsdp_timeline(make_model, _batch(), 2, NET)
    assert len(axes) == 2
    labels = [t.get_text() for ax in axes for t in ax.get_legend().get_texts()]
    assert any(lab.startswith("all_gather") for lab in labels) and "forward" in labels
    assert all(len(ax.patches) > 0 for ax in axes)
    assert "prefetch" in axes[1].get_title() and "no prefetch" in axes[0].get_title()


def test_bench_fsdp_prints_the_table(capsys):
    from mlscale.bench.fsdp import main

    assert main(["--d-model", "16", "--layers", "2", "--seq-len", "8", "--vocab", "11", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "| ZeRO-3 |" in out and "1.50x" in out and "Ethernet-like" in out


def test_timeline_shares_the_longer_time_axis():
    axes = plot_fsdp_timeline(make_model, _batch(), 2, NET)
    t = prefetch_step_times(make_model, _batch(), 2, NET)
    assert axes[0].get_xlim()[1] == axes[1].get_xlim()[1] >= t["no prefetch"] * 1e3
