"""Long context (mlscale/parallel/context.py): Ulysses and ring attention equal full attention
(forward and q/k/v gradients, float64, 1e-12) on 1-4 simulated ranks; bytes from the trace equal
the formulas; the zig-zag split balances causal work; the cache is O(s/p); overlapping the K/V
shift with compute gives the step time max(compute, transfer) instead of their sum; bad input
raises a clear error."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlscale as ms  # noqa: E402
from mlscale import parallel as mp  # noqa: E402
from mlscale.comm import CommError, NetworkModel  # noqa: E402
from mlscale.nn.attention import attention_backward, attention_forward  # noqa: E402

B, H, S, DH = 2, 4, 24, 8  # S divides by 2p for p = 1, 2, 3, 4


def _data(seed=0, shape=(B, H, S, DH)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(4)]  # q, k, v, dout


def _full(q, k, v, dy, causal):
    y, cache = attention_forward(q, k, v, causal=causal)
    return (y,) + attention_backward(dy, cache)


def _ring_prog(comm, data, causal, zigzag, backward=True):
    q, k, v, dy = (mp.cp_shard(x, comm.world_size, comm.rank, zigzag) for x in data)
    out, cache = mp.ring_attention(comm, q, k, v, causal=causal, zigzag=zigzag)
    grads = mp.ring_attention_backward(comm, dy, cache) if backward else ()
    return (out,) + tuple(grads), cache


def _ulysses_prog(comm, data, causal, backward=True):
    q, k, v, dy = (mp.cp_shard(x, comm.world_size, comm.rank, zigzag=False) for x in data)
    out, cache = mp.ulysses_attention(comm, q, k, v, causal=causal)
    grads = mp.ulysses_attention_backward(comm, dy, cache) if backward else ()
    return (out,) + tuple(grads)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("zigzag", [True, False])
def test_ring_attention_equals_full_attention(p, causal, zigzag):
    data = _data(p)
    want = _full(*data, causal)
    res = ms.launch(_ring_prog, p, args=(data, causal, zigzag))
    for i, name in enumerate(["out", "dq", "dk", "dv"]):
        got = mp.cp_unshard([r[0][i] for r in res], zigzag)
        np.testing.assert_allclose(got, want[i], rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_ulysses_equals_full_attention_and_moves_the_formula_bytes(p, causal):
    data = _data(10 + p)
    want = _full(*data, causal)
    res = ms.launch(_ulysses_prog, p, args=(data, causal))
    for i, name in enumerate(["out", "dq", "dk", "dv"]):
        got = mp.cp_unshard([r[i] for r in res], zigzag=False)
        np.testing.assert_allclose(got, want[i], rtol=0, atol=1e-12, err_msg=name)
    # bytes: 4 all-to-alls forward (q, k, v, out), 4 backward (dout; dq, dk, dv); each sends
    # (p - 1)/p of the rank's b h (s/p) dh itemsize: with b h s dh = 1536 float64, 4 (p-1)/p 1536 8 / p
    local = (B, H, S // p, DH)
    fwd = mp.ulysses_bytes(local, 8, p)
    assert fwd == 4 * (p - 1) * B * H * S * DH * 8 // (p * p)
    only_fwd = ms.launch(_ulysses_prog, p, args=(data, causal, False))
    assert only_fwd.trace.per_rank_bytes() == [fwd] * p
    assert res.trace.per_rank_bytes() == [2 * fwd] * p
    assert all(m.label == "all_to_all/pairwise" for m in res.trace.messages)
    assert len(only_fwd.trace.messages) == 4 * p * (p - 1)  # pairwise: p - 1 messages per rank each


@pytest.mark.parametrize("p", [2, 3, 4])
def test_ring_bytes_from_the_trace(p):
    data = _data()
    local = (B, H, S // p, DH)
    want = mp.ring_bytes(local, 8, p)
    assert want == {"forward": (p - 1) * 2 * B * H * (S // p) * DH * 8,
                    "backward": (2 * p - 1) * 2 * B * H * (S // p) * DH * 8}
    fwd = ms.launch(_ring_prog, p, args=(data, True, True, False)).trace
    both = ms.launch(_ring_prog, p, args=(data, True, True)).trace
    assert fwd.per_rank_bytes() == [want["forward"]] * p
    assert both.per_rank_bytes() == [want["forward"] + want["backward"]] * p
    for r in range(p):  # backward: K, V p - 1 times, then dK, dV p times (the last one brings mine home)
        assert both.bytes_sent(r, "ring_attention kv") == 2 * want["forward"]
        assert both.bytes_sent(r, "ring_attention dkv") == p * 2 * B * H * (S // p) * DH * 8
        assert {(m.src, m.dst) for m in both.messages if m.src == r} == {(r, (r + 1) % p)}  # a ring


@pytest.mark.parametrize("p", [2, 3, 4])
def test_zigzag_balances_the_causal_work(p):
    data = _data()
    counts = {}
    for zz in (True, False):
        res = ms.launch(_ring_prog, p, args=(data, True, zz, False))
        counts[zz] = [len(c.pairs) for _, c in res]
        # the pairs a run computed are those ring_work draws (in 2p-chunk units)
        owner, _ = mp.ring_work(p, True, zz)
        for r, (_, cache) in enumerate(res):
            for t, qc, kc in cache.pairs:
                cells = [(qc, kc)] if zz else [(2 * qc + a, 2 * kc + b) for a in (0, 1) for b in (0, 1)]
                assert all(owner[x, y] == r for x, y in cells if y <= x)
    assert counts[True] == [2 * p + 1] * p  # every rank: its own 3 pairs, then 2 per step
    assert counts[False] == [r + 1 for r in range(p)]  # rank r: the K/V of ranks 0..r only
    assert mp.work_per_rank(p, True, True) == [2 * p + 1] * p
    assert mp.work_per_rank(p, True, False) == [4 * r + 3 for r in range(p)]
    assert sum(mp.work_per_rank(p, True, True)) == sum(mp.work_per_rank(p, True, False)) == p * (2 * p + 1)
    assert mp.work_per_rank(p, False, True) == mp.work_per_rank(p, False, False) == [4 * p] * p


@pytest.mark.parametrize("zigzag", [True, False])
def test_the_cache_holds_s_over_p_tokens(zigzag):
    data = _data()
    sizes = {}
    for p in (1, 4):
        res = ms.launch(_ring_prog, p, args=(data, True, zigzag, False))
        n = S // p
        for _, c in res:
            assert [a.shape for a in (c.q, c.k, c.v, c.out)] == [(B, H, n, DH)] * 4 and c.lse.shape == (B, H, n)
            assert c.nbytes == (4 * B * H * n * DH + B * H * n) * 8
        sizes[p] = res[0][1].nbytes
    assert sizes[4] * 4 == sizes[1]


SHAPE = (1, 2, 32, 8)


@pytest.mark.parametrize("flops", [1e7, 1e9])  # compute-bound, then transfer-bound
@pytest.mark.parametrize("causal, zigzag", [(True, True), (False, False), (False, True)])
def test_overlap_gives_max_not_sum_per_step(flops, causal, zigzag):
    net = NetworkModel(alpha=1e-5, beta=1e-9, flops=flops)
    p = 4
    t = {ov: mp.ring_run(p, SHAPE, net, causal, zigzag, ov)[0] for ov in (True, False)}
    local = (SHAPE[0], SHAPE[1], SHAPE[2] // p, SHAPE[3])
    for ov in (True, False):
        want = mp.ring_forward_time(p, local, 8, net, causal, zigzag, ov)
        assert t[ov]["forward"] == pytest.approx(want, rel=1e-12, abs=0)
    assert t[True]["forward"] < t[False]["forward"]
    assert t[True]["backward"] < t[False]["backward"]
    # by hand, causal zig-zag: step 0 computes 3 pairs, steps 1..3 two, pair = 4 b h c^2 dh FLOPs
    if causal:
        c = SHAPE[2] // (2 * p)
        pair = 4 * SHAPE[0] * SHAPE[1] * c * c * SHAPE[3] / flops
        tt = 1e-5 + 2 * np.prod(local) * 8 * 1e-9
        assert t[True]["forward"] == pytest.approx(max(3 * pair, tt) + 2 * max(2 * pair, tt) + 2 * pair, rel=1e-12)
        assert t[False]["forward"] == pytest.approx(9 * pair + 3 * tt, rel=1e-12)


def test_free_links_leave_only_compute():
    free = NetworkModel(alpha=0, beta=0, flops=1e8)
    t = mp.ring_times(3, (1, 2, 12, 4), free)
    assert t["overlap"]["forward"] == pytest.approx(t["no overlap"]["forward"], rel=1e-12)
    assert t["overlap"]["backward"] == pytest.approx(t["no overlap"]["backward"], rel=1e-12)


def _overlapping(trace, rank, msg_label, span_label):
    msgs = [m for m in trace.messages if m.src == rank and m.label == msg_label]
    spans = [s for s in trace.spans if s.rank == rank and s.label == span_label]
    return sum(max(0.0, min(m.end, s.end) - max(m.start, s.start)) for m in msgs for s in spans)


def test_the_timeline_shows_the_overlap():
    net = NetworkModel(alpha=1e-5, beta=1e-9, flops=1e8)
    (_, on), (_, off) = (mp.ring_run(4, SHAPE, net, True, True, ov) for ov in (True, False))
    for r in range(4):
        assert _overlapping(on, r, "ring_attention kv", "ring_attention forward") > 0
        assert _overlapping(on, r, "ring_attention dkv", "ring_attention backward") > 0
        assert _overlapping(off, r, "ring_attention kv", "ring_attention forward") == 0
        assert _overlapping(off, r, "ring_attention kv", "ring_attention backward") == 0
    assert on.bytes_sent() == off.bytes_sent() and len(on) == len(off)  # only the timing moves
    axes = mp.plot_ring_timeline(4, SHAPE, net)
    assert "no overlap" in axes[0].get_title() and ", overlap" in axes[1].get_title()
    assert all(len(ax.patches) > 0 for ax in axes)
    axes = mp.plot_ring_work(4)
    assert "[3, 7, 11, 15]" in axes[0].get_title() and "[9, 9, 9, 9]" in axes[1].get_title()


# ---------------------------------------------------------------- bad input
def test_a_sequence_that_does_not_split_is_named():
    x = np.zeros((1, 2, 10, 4))
    with pytest.raises(ValueError, match=r"10 tokens does not split into 2 x cp = 8 zig-zag chunks.*divisible by 8"):
        mp.cp_shard(x, 4, 0, zigzag=True)
    with pytest.raises(ValueError, match=r"10 tokens does not split into cp = 4 ranks.*e\.g\. 12"):
        mp.cp_shard(x, 4, 0, zigzag=False)

    def odd_local(comm):
        q = np.zeros((1, 2, 3, 4))
        return mp.ring_attention(comm, q, q, q, zigzag=True)

    with pytest.raises(ValueError, match=r"3 local tokens do not split into the 2 zig-zag chunks"):
        ms.launch(odd_local, 2)


def test_ranks_holding_different_token_counts_fail_not_hang():
    def uneven_ring(comm):
        q = np.zeros((1, 2, 4 + 2 * comm.rank, 4))
        return mp.ring_attention(comm, q, q, q)

    with pytest.raises(ValueError, match=r"every cp rank must hold the same number of tokens"):
        ms.launch(uneven_ring, 2, timeout=60)

    def uneven_ulysses(comm):
        q = np.zeros((1, 2, 4 + comm.rank, 4))
        return mp.ulysses_attention(comm, q, q, q)

    with pytest.raises(CommError):
        ms.launch(uneven_ulysses, 2, timeout=60)


def test_ulysses_heads_must_divide():
    def prog(comm):
        q = np.zeros((1, 6, 2, 4))
        return mp.ulysses_attention(comm, q, q, q)

    with pytest.raises(ValueError, match=r"6 heads cannot be split over cp=4 ranks.*ring_attention"):
        ms.launch(prog, 4)


def test_shapes_and_formula_limits():
    q = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"q, k, v must have one shape"):
        ms.launch(lambda c: mp.ring_attention(c, q, q[:, :1], q), 1)
    with pytest.raises(ValueError, match=r"unequal work.*zigzag=True"):
        mp.ring_forward_time(2, (1, 2, 4, 4), 8, NetworkModel(), causal=True, zigzag=False)

    def bad_dout(comm):
        out, cache = mp.ring_attention(comm, q, q, q)
        return mp.ring_attention_backward(comm, q[:, :, :2], cache)

    with pytest.raises(ValueError, match=r"dout has shape \(1, 2, 2, 4\), the forward's output \(1, 2, 4, 4\)"):
        ms.launch(bad_dout, 2)


def test_shard_and_unshard_are_inverse():
    x = np.arange(2 * 16).reshape(2, 16)
    for zz in (True, False):
        pieces = [mp.cp_shard(x, 4, r, zz, axis=1) for r in range(4)]
        assert np.array_equal(mp.cp_unshard(pieces, zz, axis=1), x)
    assert list(mp.cp_positions(16, 4, 1, zigzag=True)) == [2, 3, 12, 13]  # chunks 1 and 2p-1-1 = 6
