"""mlscale.viz draws what the trace says: bars per message, bytes per link and per rank,
the ring's frames and their contents, the model against the simulated clock."""
import re

import matplotlib
import matplotlib.text

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlscale as ms  # noqa: E402
from mlscale import viz  # noqa: E402
from mlscale.collectives import cost  # noqa: E402

NET = ms.NetworkModel(alpha=1e-5, beta=1e-9, gamma=2e-10)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def busy(comm):
    """Compute, a barrier and a ring all-reduce of a length p does not divide."""
    comm.compute(seconds=1e-6 * (comm.rank + 1))
    comm.barrier()
    return comm.all_reduce(np.ones(23, np.float32), algorithm="ring")


@pytest.fixture(scope="module")
def trace5():
    return ms.launch(busy, 5, network=NET).trace


def test_timeline_has_one_bar_per_message_and_span(trace5):
    ax = viz.timeline(trace5, arrows=True)
    n_msg, n_span = len(trace5.messages), len(trace5.spans)
    assert n_msg > 0 and n_span > 0
    assert len(ax.patches) == n_msg + n_span
    # each message bar sits on its sender's row and is as long as the transfer (in µs)
    bars = ax.patches[:n_msg]
    by_label = [m for lab in trace5.labels() for m in trace5.messages if m.label == lab]
    for bar, m in zip(bars, by_label):
        assert bar.get_y() + bar.get_height() / 2 == pytest.approx(m.src + 0.2)
        assert bar.get_width() == pytest.approx((m.end - m.start) * 1e6)
    arrows = [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)]
    assert len(arrows) == n_msg  # arrows=True: one src -> dst arrow per message
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["barrier", "all_reduce/ring", "compute", "reduce"]


def test_timeline_label_filter_keeps_only_those_messages(trace5):
    ax = viz.timeline(trace5, label="all_reduce", spans=False)
    assert len(ax.patches) == 2 * (5 - 1) * 5  # 2(p-1) ring steps, p senders
    assert "all_reduce/ring" in ax.get_legend().get_texts()[0].get_text()


def test_link_heatmap_totals_equal_the_trace(trace5):
    ax = viz.link_heatmap(trace5)
    m = np.asarray(ax.images[0].get_array())
    assert m.sum() == trace5.bytes_sent()
    for (s, d), n in trace5.link_bytes().items():
        assert m[s, d] == n
    ring_only = viz.link_matrix(trace5, label="all_reduce/ring")
    # a ring only uses r -> r+1: the rest of the matrix is empty
    mask = np.zeros((5, 5), bool)
    mask[np.arange(5), (np.arange(5) + 1) % 5] = True
    assert ring_only[~mask].sum() == 0 and (ring_only[mask] > 0).all()


def test_naive_all_reduce_heatmap_shows_the_root_bottleneck():
    tr = ms.launch(lambda c: c.all_reduce(np.ones(64), algorithm="naive"), 4).trace
    m = viz.link_matrix(tr)
    assert (m[0, 1:] == 512).all() and (m[1:, 0] == 512).all() and m[1:, 1:].sum() == 0


def test_bytes_per_rank_bars_equal_the_trace_and_the_ring_formula():
    n = 840 * 4
    tr = ms.launch(lambda c: c.all_reduce(np.ones(840, np.float32), algorithm="ring"), 4).trace
    expected = cost.bytes_sent("ring", 4, n)
    ax = viz.bytes_per_rank(tr, expected=expected)
    heights = [b.get_height() for b in ax.patches]
    assert heights == tr.per_rank_bytes() == [expected] * 4


def test_ring_schedule_passes_every_chunk_round_the_ring():
    for p in (1, 2, 3, 5, 8):
        steps = viz.ring_schedule(p)
        assert len(steps) == 2 * (p - 1)
        for phase, sends in steps:
            assert sorted(s for s, _, _ in sends) == list(range(p))
            assert all(d == (s + 1) % p for s, d, _ in sends)
            assert sorted(c for _, _, c in sends) == list(range(p))  # each chunk once per step


@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_ring_steps_replay_ends_with_every_rank_holding_every_sum(p):
    rs = viz.ring_steps(p, n=3 * p + 1)
    full = (1 << p) - 1
    assert len(rs.states) == 2 * (p - 1) + 1
    # after reduce-scatter rank r holds chunk r+1 complete and nothing else complete
    mid = rs.counts(p - 1)
    for r in range(p):
        assert mid[r, (r + 1) % p] == p
        assert (mid[r] == p).sum() == 1
    assert (rs.states[-1] == full).all()
    # the step's bytes are the trace's, and each rank sent 2(p-1)/p of n, up to chunk rounding
    assert sum(rs.chunk_bytes) == (3 * p + 1) * 4
    assert rs.sent[-1].max() - rs.sent[-1].min() <= 2 * 4
    assert rs.sent[-1].sum() == 2 * (p - 1) * rs.nbytes
    times = [t for _, _, t in rs.steps]
    assert times == sorted(times) and times[-1] == pytest.approx(cost.all_reduce("ring", p, 0, 1e-5, 1e-9), rel=0.2)


def test_ring_steps_from_a_trace_with_other_traffic_and_a_refusal(trace5):
    rs = viz.ring_steps(trace5)
    assert rs.p == 5 and sum(rs.chunk_bytes) == 23 * 4
    tr = ms.launch(lambda c: c.all_reduce(np.ones(23), algorithm="rabenseifner"), 4).trace
    with pytest.raises(ValueError, match="ring messages per rank"):
        viz.ring_steps(tr)


@pytest.mark.parametrize("p", [3, 5])
def test_animate_ring_has_one_frame_per_step_plus_the_start(p):
    anim = viz.animate_ring(p, n=2 * p + 1, dpi=30)
    assert anim.n_frames == 2 * (p - 1) + 1 == len(anim.ring.states)
    html = anim.to_jshtml()
    assert len(re.findall(r"frames\[\d+\] = ", html)) == 2 * (p - 1) + 1
    assert len(html) < 400_000  # light enough for a committed notebook
    # the last frame drawn shows every cell complete: p * p cells numbered p
    ax = anim._fig.axes[0]
    viz.draw_ring_frame(ax, anim.ring, anim.n_frames - 1)
    numbers = [t.get_text() for t in ax.texts if t.get_text().isdigit()]
    assert numbers == [str(p)] * (p * p)


def test_ring_steps_figure_has_a_panel_per_frame():
    fig = viz.ring_steps_figure(4)
    drawn = [ax for ax in fig.axes if ax.patches]
    assert len(drawn) == 2 * (4 - 1) + 1
    assert drawn[0].get_title().startswith("start")
    assert drawn[-1].get_title().startswith("step 6/6: all-gather")


def test_cost_vs_size_model_matches_the_simulated_clock_and_finds_the_crossover():
    sizes = [64, 512, 4096, 1 << 15, 1 << 18, 1 << 21]
    net = ms.NetworkModel(alpha=1e-5, beta=1e-9)
    ax = viz.cost_vs_size(p=8, sizes=sizes, network=net, measured={"fake mpi": (sizes[:2], [1e-4, 2e-4])})
    sw = ax.sweep
    assert sw.max_relative_error() < 1e-9  # powers of two: the sim equals the model
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(lines) == 2 * len(cost.ALL_REDUCE) + 1
    for a in cost.ALL_REDUCE:
        np.testing.assert_allclose(lines[f"{a} (sim)"].get_ydata(), sw.simulated[a])
        np.testing.assert_allclose(lines[f"{a} (model)"].get_xdata(), sizes)
    best = sw.best()
    assert best[0] == "recursive_doubling" and best[-1] in ("ring", "rabenseifner")
    (size, frm, to), = sw.crossovers()
    assert frm == "recursive_doubling" and to == "rabenseifner" and 512 < size <= 1 << 18


def test_timeline_unit_puts_two_runs_on_one_scale():
    res = ms.launch(lambda c: c.broadcast(np.ones(1000), algorithm="linear"), 4, network=NET)
    ax = viz.timeline(res.trace, unit="ms")
    assert ax.get_xlabel() == "virtual time (ms)"
    assert max(b.get_x() + b.get_width() for b in ax.patches) == pytest.approx(res.time * 1e3)
    with pytest.raises(ValueError, match="unit='hours'"):
        viz.timeline(res.trace, unit="hours")


def hand_written_ring(comm, x, d=1):
    """A learner's ring on sendrecv alone (no label): the replay must accept it.
    d=-1 runs it the other way round (a right answer on a schedule the replay refuses)."""
    p, r = comm.world_size, comm.rank
    right, left = (r + d) % p, (r - d) % p
    chunks = np.array_split(x.copy(), p)
    for s in range(p - 1):
        chunks[(r - d * (s + 1)) % p] += comm.sendrecv(chunks[(r - d * s) % p], right, left)
    for s in range(p - 1):
        chunks[(r - d * s) % p][...] = comm.sendrecv(chunks[(r + d * (1 - s)) % p], right, left)
    return np.concatenate(chunks)


def test_ring_steps_replays_a_hand_written_ring_and_refuses_another_schedule():
    res = ms.launch(lambda c: hand_written_ring(c, np.arange(11.0)), 4)
    assert all(np.array_equal(r, 4 * np.arange(11.0)) for r in res)
    rs = viz.ring_steps(res.trace, label="")
    assert rs.chunk_bytes == [24, 24, 24, 16] and (rs.states[-1] == 0b1111).all()
    with pytest.raises(ValueError, match="ring messages per rank"):
        viz.ring_steps(res.trace)  # the default label is the library's ring: none here
    odd = ms.launch(lambda c: hand_written_ring(c, np.arange(11.0), d=-1), 4)
    assert all(np.array_equal(r, 4 * np.arange(11.0)) for r in odd)
    with pytest.raises(ValueError, match="schedule says chunk"):
        viz.ring_steps(odd.trace, label="")
