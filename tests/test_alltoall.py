"""all_to_all on the sim engine: every algorithm equals the block transpose (NumPy) for
p = 1..8, even and uneven pieces; the virtual time and bytes equal the cost model;
bad arguments give a clear error naming the ranks, never a hang."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import alltoall, cost
from mlscale.comm import CommError

ALGOS = ["pairwise", "bruck", "linear", None]


def _pieces(rank, p, dtype=np.float64, rows=(3,), seed=0):
    """Rank's p pieces, uneven lengths (0 included), values naming (rank, piece)."""
    rng = np.random.default_rng([seed, rank])
    lens = rng.integers(0, 4, p)
    return [(1000 * rank + 10 * j + rng.random((int(lens[j]),) + rows) * 5).astype(dtype) for j in range(p)]


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("p", range(1, 9))
def test_uneven_pieces_equal_the_block_transpose(algorithm, p):
    res = ms.launch(lambda c: c.all_to_all(_pieces(c.rank, p), algorithm=algorithm), p)
    want = alltoall.reference([_pieces(i, p) for i in range(p)])
    for j in range(p):
        assert len(res[j]) == p
        for i in range(p):
            np.testing.assert_array_equal(res[j][i], want[j][i], err_msg=f"rank {j}, piece from {i}")


@pytest.mark.parametrize("algorithm", ["pairwise", "bruck", "linear"])
@pytest.mark.parametrize("p", [3, 4, 7])
def test_one_array_even_and_uneven_splits(algorithm, p):
    def prog(c):
        x = np.arange(2 * p * 5, dtype=np.int32).reshape(2 * p, 5) + 100 * c.rank
        even = c.all_to_all(x, algorithm=algorithm)
        sizes = [(c.rank + j) % 3 for j in range(p)]
        z = np.arange(sum(sizes) * 2.0).reshape(-1, 2) - c.rank
        y, got = c.all_to_all_v(z, sizes, algorithm=algorithm)
        out = np.empty_like(even)
        same = c.all_to_all(x, algorithm=algorithm, out=out)
        return even, y, got, same is out and np.array_equal(out, even)

    res = ms.launch(prog, p)
    for r, (even, y, got, into) in enumerate(res):
        x = [np.arange(2 * p * 5, dtype=np.int32).reshape(2 * p, 5) + 100 * i for i in range(p)]
        np.testing.assert_array_equal(even, np.concatenate([x[i][2 * r:2 * r + 2] for i in range(p)]))
        assert even.dtype == np.int32 and into
        assert got == [(i + r) % 3 for i in range(p)]
        parts = []
        for i in range(p):
            sizes = [(i + j) % 3 for j in range(p)]
            z = np.arange(sum(sizes) * 2.0).reshape(-1, 2) - i
            cut = np.cumsum([0] + sizes)
            parts.append(z[cut[r]:cut[r + 1]])
        np.testing.assert_array_equal(y, np.concatenate(parts))


def test_scalar_pieces_and_world_of_one():
    res = ms.launch(lambda c: c.all_to_all([10 * c.rank + j for j in range(3)]), 3)
    assert [[float(v) for v in r] for r in res] == [[0, 10, 20], [1, 11, 21], [2, 12, 22]]
    assert res[0][0].shape == ()
    one = ms.launch(lambda c: c.all_to_all(np.arange(4.0)), 1)[0]
    np.testing.assert_array_equal(one, np.arange(4.0))


def test_validation_off_still_agrees_on_uneven_counts():
    def prog(c):
        c.check = False
        return c.all_to_all_v(np.arange(3.0) + 10 * c.rank, [c.rank, 3 - c.rank] if c.world_size == 2 else None)

    (y0, g0), (y1, g1) = ms.launch(prog, 2)
    assert g0 == [0, 1] and g1 == [3, 2]
    np.testing.assert_array_equal(y0, [10.0])
    np.testing.assert_array_equal(y1, [0, 1, 2, 11, 12])


def test_the_default_is_mpichs_choice_by_size():
    def prog(c, n):
        return c.all_to_all(np.ones(8 * n))

    small = ms.launch(prog, 8, args=(4,))  # 32-byte pieces
    large = ms.launch(prog, 8, args=(64,))  # 512-byte pieces
    assert {m.label for m in small.trace.messages} == {"all_to_all/bruck"}
    assert {m.label for m in large.trace.messages} == {"all_to_all/pairwise"}
    assert {m.label for m in ms.launch(prog, 4, args=(4,)).trace.messages} == {"all_to_all/pairwise"}


# ---------------------------------------------------------------- cost model
NET = ms.NetworkModel(alpha=1e-5, beta=1e-9)


def _time_and_bytes(algorithm, p, m):
    res = ms.launch(lambda c: c.all_to_all(np.ones(p * m), algorithm=algorithm), p, network=NET)
    return res.time, res.trace.per_rank_bytes()


@pytest.mark.parametrize("algorithm", ["pairwise", "bruck"])
@pytest.mark.parametrize("p", range(1, 9))
@pytest.mark.parametrize("m", [105, 20000])  # float64 per piece: eager, and above the eager limit
def test_time_and_bytes_equal_the_model(algorithm, p, m):
    n = p * m * 8
    t, sent = _time_and_bytes(algorithm, p, m)
    assert t == pytest.approx(cost.all_to_all(algorithm, p, n, NET.alpha, NET.beta), rel=1e-9)
    assert sent == [pytest.approx(cost.all_to_all_bytes_sent(algorithm, p, n))] * p


def test_bruck_trades_bytes_for_messages():
    # p = 8: 3 messages of n/2 against 7 of n/8; Bruck wins small, pairwise large
    assert cost.all_to_all_bytes_sent("bruck", 8, 800) == 1200 and cost.all_to_all_bytes_sent("pairwise", 8, 800) == 700
    a, b = NET.alpha, NET.beta
    assert cost.all_to_all("bruck", 8, 8 * 32, a, b) < cost.all_to_all("pairwise", 8, 8 * 32, a, b)
    assert cost.all_to_all("bruck", 8, 8 << 20, a, b) > cost.all_to_all("pairwise", 8, 8 << 20, a, b)
    msgs = ms.launch(lambda c: c.all_to_all(np.ones(64), algorithm="bruck"), 8).trace.messages
    assert len(msgs) == 8 * 3


@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_linear_pays_for_first_come_ports_on_sim(p):
    t, sent = _time_and_bytes("linear", p, 105)
    bound = cost.all_to_all("linear", p, p * 105 * 8, NET.alpha, NET.beta)
    assert t == pytest.approx(bound if p == 2 else 3 * bound, rel=1e-9)
    assert sent == [pytest.approx(cost.all_to_all_bytes_sent("linear", p, p * 105 * 8))] * p


# ---------------------------------------------------------------- bad input
def _error(prog, p):
    with pytest.raises(CommError) as e:
        ms.launch(prog, p)
    return str(e.value)


def test_pieces_of_the_wrong_count():
    msg = _error(lambda c: c.all_to_all([np.ones(2)] * 3), 4)
    assert "world_size=4 pieces" in msg and "passed 3" in msg
    msg = _error(lambda c: c.all_to_all([np.ones(2)] * (3 if c.rank == 1 else 4)), 4)
    assert "rank 1" in msg and "3 pieces" in msg and "4 pieces" in msg


def test_mismatched_splits_name_both_ranks():
    def prog(c):
        recv = [1, 1, 1] if c.rank == 1 else [[1, 2, 3], [1, 2, 3], [1, 2, 3]][c.rank]
        return c.all_to_all_v(np.ones(6), [1, 2, 3], recv_split_sizes=[recv[c.rank]] * 3)

    msg = _error(prog, 3)
    assert "rank 0 expects 1 row(s) from rank 0, which sends it 1" not in msg
    assert "rank 1 expects 1 row(s) from rank 0, which sends it 2" in msg


@pytest.mark.parametrize("bad,words", [
    (lambda c: c.all_to_all(np.ones(5)), ["5 rows", "not a multiple of world_size=2", "split_sizes"]),
    (lambda c: c.all_to_all(np.ones(5), split_sizes=[2, 2]), ["sums to 4", "5 rows"]),
    (lambda c: c.all_to_all(np.ones(5), split_sizes=[2, 2, 1]), ["2 whole numbers"]),
    (lambda c: c.all_to_all(np.ones(5), split_sizes=[2.5, 2.5]), ["whole numbers"]),
    (lambda c: c.all_to_all(np.float64(1.0)), ["0-d array"]),
    (lambda c: c.all_to_all([np.ones((1, 2)), np.ones((1, 3))]), ["piece 1 has shape (1, 3)"]),
    (lambda c: c.all_to_all([np.ones(2)] * 2, algorithm="ring"), ["unknown all_to_all algorithm", "bruck"]),
    (lambda c: c.all_to_all([np.ones(2, np.float32 if c.rank else np.float64)] * 2), ["dtype", "rank 1"]),
    (lambda c: c.all_to_all([np.ones((1, 2 + c.rank))] * 2), ["shape", "rank 0", "rank 1"]),
])
def test_bad_arguments_say_what_and_how(bad, words):
    msg = _error(bad, 2)
    for w in words:
        assert w in msg, msg
