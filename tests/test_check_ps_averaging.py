"""Parameter-server consistency (SSP bound, the applied-gradient log, server traffic),
local SGD (bytes 1/H, optimizer-state averaging, drift), and the checkers of
notebooks 04 and 05."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn, train
from mlscale.check import averaging as check_avg
from mlscale.check import ps as check_ps
from mlscale.train.local_sgd import LocalSGD, model_disagreement
from mlscale.train.param_server import ParameterServer, clock_lag, ssp_may_proceed

X, Y, XT, YT = data.load_digits()


def run_ps(sync, workers, steps=10, speeds=None, num_servers=1, sizes=(64, 8, 10), on_update=None):
    net = ms.NetworkModel(alpha=1e-6, beta=1e-10, speeds=speeds, flops=1e8)

    def prog(comm):
        model = nn.MLP(list(sizes), seed=0, dtype=np.float64)
        return train.train(comm, model, lambda t: nn.SGD(t, lr=0.05), X, Y, sync=sync, steps=steps,
                           batch_size=4 * workers, check=False)

    return ms.launch(prog, workers + num_servers, network=net)


# ------------------------------------------------------------------ parameter servers
def test_ssp_rule():
    assert ssp_may_proceed(5, 3, 2) and not ssp_may_proceed(5, 2, 2)
    assert ssp_may_proceed(0, 0, 0) and not ssp_may_proceed(1, 0, 0)
    assert ssp_may_proceed(100, 0, None)


@pytest.mark.parametrize("workers", [2, 3, 5])
@pytest.mark.parametrize("s", [0, 1, 3])
def test_ssp_clock_lag_is_bounded_by_s_and_the_bound_is_reached(workers, s):
    res = run_ps(ParameterServer("ssp", staleness=s), workers, steps=12, speeds={workers: 0.25})
    server = res[0]
    lags = clock_lag(server)
    assert len(lags) == server.updates == 12 * workers
    assert max(lags) == s  # a 4x straggler: the fast workers run the full s ahead, no more
    assert min(lags) >= 0


def test_async_lag_is_unbounded_and_sync_lag_is_zero():
    async_server = run_ps(ParameterServer("async"), 3, steps=12, speeds={3: 0.25})[0]
    assert max(clock_lag(async_server)) >= 6  # fast workers run ~3x as many steps as the straggler
    sync_server = run_ps(ParameterServer("sync"), 3, steps=5, speeds={3: 0.25})[0]
    assert clock_lag(sync_server) == [0] * 15
    assert [a[:3] for a in sync_server.applied[:3]] == [(1, 0, 0), (2, 0, 0), (3, 0, 0)]


def test_applied_log_agrees_with_staleness_records():
    server = run_ps(ParameterServer("ssp", staleness=2), 3, steps=10, speeds={2: 0.5})[0]
    assert len(server.applied) == server.updates == len(server.staleness)
    for k, (w, c, v, after) in enumerate(server.applied):
        assert after == k + 1 and server.staleness[k] == k - v
        assert server.staleness_by_worker[w][c] == k - v  # c: the worker's own clock
    with pytest.raises(ValueError, match="server"):
        clock_lag(train.History())


def test_on_update_sees_every_update_at_the_servers_clock():
    seen = []
    server = run_ps(ParameterServer("async", on_update=lambda k, t: seen.append((k, t))), 2, steps=6)[0]
    assert [k for k, _ in seen] == list(range(1, 13)) == list(range(1, server.updates + 1))
    assert [t for _, t in seen] == server.clocks[:-1]


def test_bad_admit_and_on_update_are_clear_errors():
    with pytest.raises(TypeError, match="admit"):
        ParameterServer("ssp", staleness=1, admit=3)
    with pytest.raises(TypeError, match="on_update"):
        ParameterServer("ssp", staleness=1, on_update="x")
    with pytest.raises(TypeError, match="True or False"):
        run_ps(ParameterServer("ssp", staleness=1, admit=lambda c, m, s: "yes"), 2, steps=3)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("workers", [1, 3, 5])
def test_each_server_moves_2pn_over_k_bytes_per_step(k, workers):
    steps = 2
    res = run_ps(ParameterServer("sync", num_servers=k), workers, steps=steps, num_servers=k, sizes=(64, 16, 10))
    n = nn.MLP([64, 16, 10], dtype=np.float64).num_params
    for j, shard in enumerate(np.array_split(np.arange(n), k)):  # near-equal shards, as the servers cut
        assert res[j].role == "server"
        nj = shard.size * 8  # bytes of server j's shard
        moved = res.trace.bytes_received(j) + res.trace.bytes_sent(j)
        # per step and worker: its gradient shard in, the parameter shard out, + 8 + 16 header bytes
        assert moved == steps * workers * (2 * nj + 24)
        assert abs(nj - 8 * n / k) <= 8


# ------------------------------------------------------------------ local SGD
def run_local(p, sync, steps=8, momentum=0.0, snaps=False):
    def prog(comm):
        model = nn.MLP([64, 16, 10], seed=0, dtype=np.float64)
        opt = nn.SGD(model, lr=0.1, momentum=momentum)
        seen = []
        train.train(comm, model, opt, X, Y, sync=sync, steps=steps, batch_size=8 * p, check=False,
                    on_step=(lambda t, loss: seen.append(model.params.copy())) if snaps else None)
        buf = opt.momentum_buf.copy() if opt.momentum_buf is not None else None
        return model.params.copy(), buf, seen

    return ms.launch(prog, p, network=ms.NetworkModel(alpha=1e-6, beta=1e-9))


@pytest.mark.parametrize("p", [2, 3, 5])
def test_local_sgd_bytes_fall_as_1_over_h(p):
    one = run_local(p, LocalSGD(H=1), steps=8).trace.bytes_sent(rank=0)
    n = nn.MLP([64, 16, 10], dtype=np.float64).nbytes
    assert one == pytest.approx(8 * 2 * (p - 1) / p * n, rel=0.01)  # ring: 2(p-1)/p n per average
    for H in (2, 4, 8):
        assert run_local(p, LocalSGD(H=H), steps=8).trace.bytes_sent(rank=0) * H == one


@pytest.mark.parametrize("p", [2, 3])
def test_averaging_momentum_makes_the_buffers_equal_and_doubles_the_bytes(p):
    plain = run_local(p, LocalSGD(H=4), momentum=0.9)
    both = run_local(p, LocalSGD(H=4, average_optimizer_state=True), momentum=0.9)
    assert not np.allclose(plain[0][1], plain[1][1])  # momentum buffers left to drift
    assert all(np.allclose(both[0][1], b, rtol=1e-12) for _, b, _ in both)  # averaged (was a no-op before)
    for r in range(p):
        np.testing.assert_allclose(both[r][0], both[0][0], rtol=1e-12)
    assert both.trace.bytes_sent(rank=0) == 2 * plain.trace.bytes_sent(rank=0)


def test_disagreement_is_a_sawtooth():
    res = run_local(3, LocalSGD(H=3), steps=9, snaps=True)
    d = [model_disagreement([r[2][t] for r in res]) for t in range(9)]
    assert d[2] == d[5] == d[8] == 0.0  # right after each average
    assert 0 < d[0] < d[1] and 0 < d[3] < d[4]
    x = np.random.default_rng(0).standard_normal((4, 5))
    assert model_disagreement(x) == pytest.approx(((x - x.mean(0)) ** 2).sum() / 4)
    with pytest.raises(ValueError, match="flat"):
        model_disagreement(np.zeros((2, 3, 4)))


def test_averager_hook_equals_the_builtin_and_rejects_non_functions():
    a = run_local(3, LocalSGD(H=2))
    b = run_local(3, LocalSGD(H=2, averager=check_avg.average_params))
    for (pa, _, _), (pb, _, _) in zip(a, b):
        np.testing.assert_allclose(pa, pb, rtol=1e-12)
    with pytest.raises(TypeError, match="averager"):
        LocalSGD(H=2, averager=1)


# ------------------------------------------------------------------ checkers
def _stub(*args):
    raise NotImplementedError


def test_ssp_checker_accepts_the_reference_and_flags_a_stub():
    assert check_ps.ssp_admission(check_ps.may_proceed, verbose=False).passed
    r = check_ps.ssp_admission(_stub, verbose=False)
    assert r.not_implemented and "not implemented" in r.summary()


@pytest.mark.parametrize("rule, words", [
    (lambda c, m, s: True if s is None else m > c - s, "too strict"),  # off by one, strict (deadlocks at s=0)
    (lambda c, m, s: True if s is None else m >= c - s - 1, "too loose"),  # off by one, loose
    (lambda c, m, s: m >= c - s, "None"),  # forgot async
    (lambda c, m, s: True, "too loose"),  # always async
    (lambda c, m, s: True if s is None else int(m >= c - s), "True or False"),
    (lambda c, m, s: True if s is None else (c - m) < s, "too strict"),
])
def test_ssp_checker_rejects_wrong_rules(rule, words):
    r = check_ps.ssp_admission(rule, verbose=False)
    assert not r.passed and words in r.summary()


def test_ssp_checker_catches_a_rule_that_only_fails_in_the_server():
    calls = {"n": 0}

    def flaky(c, m, s):  # right on the table, then (called by the server) too strict
        calls["n"] += 1
        if calls["n"] > 2000:
            return True if s is None else m >= c - s + (1 if c > 3 else 0)
        return check_ps.may_proceed(c, m, s)

    r = check_ps.ssp_admission(flaky, verbose=False)
    assert not r.passed and "parameter server" in r.summary()


def test_averaging_checker_accepts_the_reference_and_flags_a_stub():
    assert check_avg.model_averaging(check_avg.average_params, verbose=False).passed
    assert check_avg.model_averaging(_stub, verbose=False).not_implemented


@pytest.mark.parametrize("algorithm", ["tree", "ring", "recursive_doubling", "rabenseifner", None])
def test_averaging_checker_accepts_any_all_reduce_algorithm(algorithm):
    def mine(comm, model):
        comm.all_reduce(model.params, op="mean", algorithm=algorithm, out=model.params)
    r = check_avg.model_averaging(mine, verbose=False)
    assert r.passed, r.summary()


def test_averaging_checker_accepts_a_sum_then_divide_written_back():
    def mine(comm, model):
        model.params[...] = comm.all_reduce(model.params.copy(), op="sum") / comm.world_size
    r = check_avg.model_averaging(mine, verbose=False)
    assert r.passed, r.summary()


def _sums(comm, m):
    comm.all_reduce(m.params, out=m.params)


def _returns(comm, m):
    return comm.all_reduce(m.params, op="mean")


def _grads(comm, m):
    comm.all_reduce(m.grads, op="mean", out=m.grads)


def _root_only(comm, m):
    total = comm.reduce(m.params, root=0)
    if comm.rank == 0:
        m.params[...] = total / comm.world_size


def _gathers(comm, m):
    m.params[...] = comm.all_gather(m.params).reshape(comm.world_size, -1).mean(axis=0)


@pytest.mark.parametrize("fn, words", [
    (_sums, "you summed"), (_returns, "write it back"), (_grads, "PARAMETERS"),
    (_root_only, "not a reduce to one root"), (_gathers, "ONE comm.all_reduce"),
])
def test_averaging_checker_rejects_wrong_answers(fn, words):
    r = check_avg.model_averaging(fn, verbose=False)
    assert not r.passed and words in r.summary()


# ------------------------------------------------------------------ plots
def test_staleness_bars_draw_the_counts_and_the_bounds():
    import matplotlib

    matplotlib.use("Agg")
    from mlscale.viz.ps_plots import staleness_bars

    ax = staleness_bars({"a": [0, 1, 1, 5], "b": [2, 2]}, bounds={"a": 1}, max_value=3)
    heights = [round(b.get_height()) for b in ax.patches]
    assert heights == [1, 2, 0, 1, 0, 0, 2, 0]  # a: 0,1,1 and 5 -> "3+"; b: 2,2
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "3+"
    assert [line.get_xdata()[0] for line in ax.lines] == [1.5]
    with pytest.raises(ValueError, match="negative"):
        staleness_bars({"a": [-1]})
    with pytest.raises(ValueError, match="nothing"):
        staleness_bars({})


def test_disagreement_plot_puts_zeros_on_the_floor():
    import matplotlib

    matplotlib.use("Agg")
    from mlscale.viz.ps_plots import disagreement_plot

    ax = disagreement_plot({"H=2": [0.5, 0.0, 0.25, 0.0]}, floor=1e-3)
    line, zeros = ax.lines
    assert list(line.get_ydata()) == [0.5, 1e-3, 0.25, 1e-3]
    assert list(zeros.get_xdata()) == [2, 4] and ax.get_yscale() == "log"
