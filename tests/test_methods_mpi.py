"""The method packages on real MPI processes: "write a rank's program once, run it on
any engine". Tensor and pipeline parallelism, ZeRO, compressed data parallelism, D-PSGD,
gossip and push-sum, the hierarchical all-reduce and serving run here on ``mpiexec``
with 2, 3 and 4 ranks (oversubscribed on 2 cores), and every result is compared with
an oracle computed in this process: the single-device model, a closed form, or the
SAME program on ``backend="sim"``.

Each mpiexec start costs about half a second, so (as in test_mpi.py) every world size
runs ONE launch (``_batch``) that runs every section in turn and returns what each
found; the tests below read their section and check it.

Bitwise against sim: the compressed, D-PSGD, gossip and push-sum runs are compared
with ``assert_array_equal``, not a tolerance. The same program does the same float
operations in the same order on both engines: mlscale's collectives (``ring``) and
gossip are built from point-to-point messages whose payloads arrive byte for byte,
reductions run in a fixed rank order, seeds are per rank, and every process runs its
BLAS on one thread. A tolerance there would hide an engine that delivers a message
late, twice or to the wrong step. Against the single-device model (tensor and
pipeline parallelism, ZeRO), the sums are split differently, so 1e-12 relative.

Run alone: ``pytest -m mpi tests/test_methods_mpi.py``.
"""

import numpy as np
import pytest

import mlscale as ms
from mlscale import data, nn, serving
from mlscale.collectives import hierarchical as H
from mlscale.decentralized import gossip, push_sum
from mlscale.decentralized import topology as T
from mlscale.parallel import NaiveParallelMLP, ParallelMLP, PipelineParallel, shard_sizes
from mlscale.train import train
from mlscale.train.compressed import CompressedDataParallel
from mlscale.train.gossip import DPSGD

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()

WORLD_SIZES = [2, 3, 4]
TOL = dict(rtol=1e-12, atol=1e-13)
X, Y, X_TEST, Y_TEST = data.load_digits()


# ---------------------------------------------------------------- tensor parallel (Megatron MLP)
TP = dict(d=6, h=11, batch=5)  # 11 hidden columns: uneven shards on 2, 3 and 4 ranks


def _tp_data():
    d, h, batch = TP["d"], TP["h"], TP["batch"]
    ref = nn.MLP([d, h, d], activation="gelu", dtype=np.float64, seed=3)
    rng = np.random.default_rng(103)
    return ref, rng.standard_normal((batch, d)), rng.standard_normal((batch, d))


def _tp(comm):
    ref, x, dz = _tp_data()
    P = ref.state_dict()
    out = {}
    for cls in (ParallelMLP, NaiveParallelMLP):
        mlp = cls(comm, TP["d"], TP["h"], "gelu", P["0.weight"], P["0.bias"], P["2.weight"], P["2.bias"])
        sent0 = comm.nbytes_sent
        z = mlp.forward(x.copy())
        dx = mlp.backward(dz.copy())
        grads = {f"{n}.{k}": v.copy() for n, layer in (("fc1", mlp.fc1), ("fc2", mlp.fc2))
                 for k, v in layer.grads.items()}
        ranges = {n: (type(layer).__name__[:3], layer.start, layer.stop)  # "Col" or "Row"
                  for n, layer in (("fc1", mlp.fc1), ("fc2", mlp.fc2))}
        out[cls.__name__] = (z, dx, grads, ranges, comm.nbytes_sent - sent0)
    return out


# ---------------------------------------------------------------- pipeline parallel (GPipe, 1F1B)
PP_SIZES = [64, 128, 128, 128, 10]  # four Linear layers: up to four stages
PP_BATCH, PP_M = 1024, 4  # micro-batch (256, 128) float64 = 256 KiB: above every eager limit


def _pp_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((PP_BATCH, PP_SIZES[0])), rng.integers(0, PP_SIZES[-1], PP_BATCH)


def _pp(comm):
    x, y = _pp_data()
    out = {}
    for schedule in ("gpipe", "1f1b", "gpipe-blocking"):  # GPipe's order survives blocking sends
        sent0 = comm.nbytes_sent
        pipe = PipelineParallel(comm, nn.MLP(PP_SIZES, activation="gelu", dtype=np.float64, seed=1), PP_M,
                                schedule.split("-")[0], blocking=schedule.endswith("blocking"))
        opt = nn.Adam(pipe.params, lr=0.01, impl="reference")
        losses, grads = [], []
        for _ in range(2):
            losses.append(pipe.step(x, y))
            grads.append(pipe.grads.copy())
            opt.step(pipe.grads)
        out[schedule] = (pipe.stage.param_range, losses, grads, pipe.params.copy(), comm.nbytes_sent - sent0)
    return out


# ---------------------------------------------------------------- ZeRO-1
Z_SIZES, Z_STEPS, Z_BATCH = [5, 7, 3], 4, 120


def _zero_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((Z_STEPS * Z_BATCH, Z_SIZES[0])), rng.integers(0, Z_SIZES[-1], Z_STEPS * Z_BATCH)


def _zero_train(comm, mode):
    """tests/test_parallel_zero.py's training run (the sim test's), on these ranks."""
    from test_parallel_zero import _train

    traj, state, _ = _train(comm, mode, *_zero_data())
    return traj, state


def _zero(comm):
    return {mode: _zero_train(comm, mode) for mode in ("dp", "zero", "naive")}


# ---------------------------------------------------------------- compressed data parallel
CDP = {"topk": lambda: CompressedDataParallel("topk", ratio=0.01, error_feedback=True),
       "powersgd": lambda: CompressedDataParallel("powersgd", rank=2),
       "randomk": lambda: CompressedDataParallel("randomk", ratio=0.05),  # shared seed: all-reduce path
       "qsgd": lambda: CompressedDataParallel("qsgd", levels=4),  # per-rank random rounding
       "sign": lambda: CompressedDataParallel("sign")}


def _cdp_run(comm, name):
    model = nn.MLP([64, 64, 10], seed=0, dtype=np.float64)
    sync = CDP[name]()
    hist = train(comm, model, nn.SGD(model, lr=0.3), X, Y, sync=sync, steps=6, batch_size=60)
    return model.params.copy(), list(hist.losses), list(sync.nbytes_per_step)


def _cdp(comm):
    return {name: _cdp_run(comm, name) for name in CDP}


# ---------------------------------------------------------------- D-PSGD on a ring
DPSGD_RUNS = {"step_then_gossip": lambda p: DPSGD("ring"),
              "paper": lambda p: DPSGD("ring", order="paper"),  # gossip on comm.start beside the gradient
              "local2_rounds2": lambda p: DPSGD("ring", local_steps=2, gossip_rounds=2),
              "time_varying": lambda p: DPSGD("one_peer_exponential" if p in (2, 4) else "exponential")}


def _dpsgd_run(comm, name):
    model = nn.MLP([64, 16, 10], seed=3, dtype=np.float64)
    hist = train(comm, model, lambda m: nn.SGD(m, lr=0.1, momentum=0.9), X, Y,
                 sync=DPSGD_RUNS[name](comm.world_size), steps=8, batch_size=60)
    return model.params.copy(), list(hist.losses)


def _dpsgd(comm):
    return {name: _dpsgd_run(comm, name) for name in DPSGD_RUNS}


# ---------------------------------------------------------------- gossip and push-sum
G_ROUNDS, PS_ROUNDS = 5, 12


def _g_input(p):
    return np.random.default_rng(7).standard_normal((p, 40))


def _gossip(comm):
    x = _g_input(comm.world_size)[comm.rank]
    return {"ring": gossip(comm, x.copy(), "ring", rounds=G_ROUNDS),
            "exponential": gossip(comm, x.copy(), "exponential", rounds=G_ROUNDS),
            "push_sum": push_sum(comm, x.copy(), "exponential", PS_ROUNDS, return_weights=True)}


# ---------------------------------------------------------------- hierarchical all-reduce
H_CASES = [(np.float64, "sum"), (np.float32, "mean"), (np.int32, "max"), (np.float64, "min")]
H_SIZES = (1, 7, 50, 100_003)  # 100_003 float64: the two-message path


def _h_input(rank, n, dtype):
    return np.random.default_rng(100 + rank).integers(-50, 50, size=n).astype(dtype)


def _hier(comm):
    p = comm.world_size
    out = {}
    for g in sorted({1, 2 if p % 2 == 0 else p, p}):  # 4 ranks: 4 nodes of 1, 2 of 2, 1 of 4
        h = H.Hierarchy(comm, g)
        out[g] = {(np.dtype(dt).name, op, n): h.all_reduce(_h_input(comm.rank, n, dt), op=op)
                  for dt, op in H_CASES for n in H_SIZES}
        out[g]["split"] = (h.intra.rank, h.intra.world_size, h.inter.rank, h.inter.world_size)
    return out


# ---------------------------------------------------------------- serving
S_N = 120


def _serve_model():
    return nn.MLP([64, 16, 10], seed=3)


def _serve(comm):
    out = {}
    for max_batch, max_wait in ((1, 0.0), (4, 1e-3)):
        arrivals = serving.poisson_arrivals(rate=3000, n=S_N, seed=comm.world_size)
        out[max_batch] = serving.serve(comm, _serve_model(), X_TEST[:S_N], arrivals, max_batch=max_batch,
                                       max_wait=max_wait, batch_time=(2e-3, 1e-4))
    return out


H_CALLS = 600  # more one-off hierarchical all-reduces than MPICH has communicator ids for (~510)


def _hier_many(comm):
    """The one-off ``hierarchical.all_reduce`` in a loop, as a training loop would call it.
    Last in the batch: when it fails on MPI, the ranks are out of communicators."""
    if comm.world_size != 4:
        return None
    x = np.arange(5.0) + comm.rank
    for i in range(H_CALLS):
        y = H.all_reduce(comm, x, ranks_per_node=2)
    return y


# ---------------------------------------------------------------- one launch per world size
SECTIONS = {"tp": _tp, "pp": _pp, "zero": _zero, "cdp": _cdp, "dpsgd": _dpsgd, "gossip": _gossip,
            "hier": _hier, "serve": _serve, "hier_many": _hier_many}


BATCHES = Batches(SECTIONS, timeout=180)
section = BATCHES.section
batch = BATCHES.batch


_SIM = {}


def on_sim(fn, p):
    """The same section on the simulator (cached: several tests read it)."""
    if (fn, p) not in _SIM:
        _SIM[fn, p] = ms.launch(fn, p)
    return _SIM[fn, p]


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("p", WORLD_SIZES)
def test_tensor_parallel_mlp_equals_single_device(p):
    ref, x, dz = _tp_data()
    Z = ref.forward(x)
    ref.zero_grad()
    dX = ref.backward(dz)
    G = ref.named_grads()
    full = {"fc1.weight": G["0.weight"], "fc1.bias": G["0.bias"], "fc2.weight": G["2.weight"], "fc2.bias": G["2.bias"]}
    res, sim = section(p, "tp"), on_sim(_tp, p)
    for cls in ("ParallelMLP", "NaiveParallelMLP"):
        cover = np.zeros(TP["h"], dtype=int)
        for r in range(p):
            z, dx, grads, ranges, nbytes = res[r][cls]
            np.testing.assert_allclose(z, Z, **TOL)
            np.testing.assert_allclose(dx, dX, **TOL)
            (k1, a, b), (k2, c, d) = ranges["fc1"], ranges["fc2"]
            assert b - a == shard_sizes(TP["h"], p)[r]
            cover[a:b] += 1
            want = {"fc1.weight": full["fc1.weight"][:, a:b], "fc1.bias": full["fc1.bias"][a:b]}
            if cls == "ParallelMLP":  # Megatron: fc2 row-parallel over the hidden columns, full bias
                assert (k1, k2) == ("Col", "Row") and (c, d) == (a, b)
                want.update({"fc2.weight": full["fc2.weight"][c:d], "fc2.bias": full["fc2.bias"]})
            else:  # naive: fc2 column-parallel too, over d_model
                assert (k1, k2) == ("Col", "Col") and d - c == shard_sizes(TP["d"], p)[r]
                want.update({"fc2.weight": full["fc2.weight"][:, c:d], "fc2.bias": full["fc2.bias"][c:d]})
            assert sorted(grads) == sorted(want)
            for k in want:
                np.testing.assert_allclose(grads[k], want[k], **TOL, err_msg=f"{cls} rank {r} {k}")
            assert nbytes == sim[r][cls][4]  # the same bytes leave this rank on both engines
        assert cover.tolist() == [1] * TP["h"]


@pytest.mark.parametrize("p", WORLD_SIZES)
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "gpipe-blocking"])
def test_pipeline_gradients_equal_single_device(p, schedule):
    from test_parallel_pipeline import single_device_steps

    ref, ref_losses, ref_grads = single_device_steps(PP_SIZES, *_pp_data(), 2)
    res = section(p, "pp")
    sim = on_sim(_pp, p)
    covered = 0
    for r in range(p):
        (lo, hi), losses, grads, params, nbytes = res[r][schedule]
        assert lo == covered and hi > lo
        covered = hi
        for t in range(2):
            np.testing.assert_allclose(grads[t], ref_grads[t][lo:hi], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(params, ref.params[lo:hi], rtol=1e-10, atol=1e-13)
        if r == p - 1:
            np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
        else:
            assert losses == [None, None]
        # activations (256, 128) float64 = 256 KiB cross every stage boundary: the rendezvous path
        assert nbytes >= (2 if 0 < r < p - 1 else 1) * 2 * PP_M * 256 * 128 * 8
        assert nbytes == sim[r][schedule][4]
    assert covered == ref.num_params


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_zero_optimizer_trajectory_equals_data_parallel_adam(p):
    res = section(p, "zero")
    sim_dp = on_sim(_zero, p)
    n = nn.MLP(Z_SIZES, dtype=np.float64).num_params
    for r in range(p):
        want = sim_dp[r]["dp"][0]  # data parallel + Adam on the simulator
        for mode in ("dp", "zero", "naive"):
            np.testing.assert_allclose(res[r][mode][0], want, rtol=1e-12, atol=1e-14, err_msg=f"{mode} rank {r}")
        np.testing.assert_array_equal(res[r]["zero"][0], res[0]["zero"][0])  # every rank the same params
    assert [res[r]["zero"][1] for r in range(p)] == [2 * k for k in shard_sizes(n, p)]  # 1/N of the state
    assert res[0]["dp"][1] == 2 * n


@pytest.mark.parametrize("p", WORLD_SIZES)
@pytest.mark.parametrize("name", sorted(CDP))
def test_compressed_data_parallel_bitwise_equals_sim(p, name):
    res, sim = section(p, "cdp"), on_sim(_cdp, p)
    for r in range(p):
        params, losses, nbytes = res[r][name]
        s_params, s_losses, s_nbytes = sim[r][name]
        np.testing.assert_array_equal(params, s_params, err_msg=f"rank {r}")
        assert losses == s_losses and nbytes == s_nbytes
        np.testing.assert_array_equal(params, res[0][name][0])  # every rank the same bits
    assert not np.array_equal(res[0][name][0], nn.MLP([64, 64, 10], seed=0, dtype=np.float64).params)


@pytest.mark.parametrize("p", WORLD_SIZES)
@pytest.mark.parametrize("order", sorted(DPSGD_RUNS))
def test_dpsgd_ring_bitwise_equals_sim(p, order):
    res, sim = section(p, "dpsgd"), on_sim(_dpsgd, p)
    for r in range(p):
        np.testing.assert_array_equal(res[r][order][0], sim[r][order][0], err_msg=f"rank {r}")
        assert res[r][order][1] == sim[r][order][1]
    if p == 4 and order != "time_varying":  # a ring of 4 is not the complete graph: the models differ
        assert not np.array_equal(res[0][order][0], res[1][order][0])


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_gossip_and_push_sum_rounds_equal_sim_and_closed_form(p):
    res, sim = section(p, "gossip"), on_sim(_gossip, p)
    X0 = _g_input(p)
    for topo in ("ring", "exponential"):
        W = T.make_topology(topo, p).mixing_matrix()
        want = np.linalg.matrix_power(W, G_ROUNDS) @ X0  # W^k X
        for r in range(p):
            np.testing.assert_array_equal(res[r][topo], sim[r][topo])
            np.testing.assert_allclose(res[r][topo], want[r], rtol=1e-12, atol=1e-12)
    for r in range(p):
        z, s, w = res[r]["push_sum"]
        zs, ss, ws = sim[r]["push_sum"]
        np.testing.assert_array_equal(z, zs)
        np.testing.assert_array_equal(s, ss)
        assert w == ws
        np.testing.assert_allclose(z, X0.mean(0), atol=1e-2)  # push-sum approaches the average
    assert np.isclose(sum(res[r]["push_sum"][2] for r in range(p)), p)  # the weights add up to p


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_hierarchical_all_reduce_equals_numpy(p):
    res = section(p, "hier")
    gs = sorted(res[0])
    if p == 4:
        assert 2 in gs
    for g in gs:
        for r in range(p):
            node, local = divmod(r, g)
            assert res[r][g]["split"] == (local, g, node, p // g)
            for dt, op in H_CASES:
                for n in H_SIZES:
                    got = res[r][g][(np.dtype(dt).name, op, n)]
                    stack = np.stack([_h_input(q, n, dt) for q in range(p)])
                    want = {"sum": stack.sum(0), "mean": stack.mean(0, dtype=dt),
                            "max": stack.max(0), "min": stack.min(0)}[op]
                    assert got.shape == (n,) and got.dtype == np.dtype(dt), (g, r, dt, op, n)
                    if op == "mean":
                        np.testing.assert_allclose(got, want, rtol=1e-6)
                    else:  # integer-valued: exact in any order
                        np.testing.assert_array_equal(got, want, err_msg=f"{g} per node, rank {r}, {op}")


def test_one_off_hierarchical_all_reduce_in_a_loop_does_not_run_out_of_communicators():
    want = np.sum([np.arange(5.0) + r for r in range(4)], axis=0)
    for got in on_sim(_hier_many, 4):  # the simulator has no limit: the oracle
        np.testing.assert_array_equal(got, want)
    for got in section(4, "hier_many"):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_serving_predictions_equal_model_predict(p):
    res = section(p, "serve")
    want = _serve_model().predict(X_TEST[:S_N])
    for max_batch in (1, 4):
        stats = res[0][max_batch]
        assert np.array_equal(stats.predictions, want)
        assert not np.isnan(stats.finished).any() and np.all(stats.finished >= stats.dispatched)
        assert sum(b[3] for b in stats.batches) == S_N and max(b[3] for b in stats.batches) <= max_batch
        assert sum(res[r][max_batch] for r in range(1, p)) == len(stats.batches)
        assert set(stats.replica.tolist()) <= set(range(1, p))


def test_one_launch_per_world_size_quickly():
    for p in WORLD_SIZES:
        batch(p)
    took = {p: round(BATCHES.took(p), 1) for p in WORLD_SIZES}
    per_section = {p: {k: round(v[2], 2) for k, v in BATCHES.batch(p)[0].items()} for p in WORLD_SIZES}
    print("launch seconds", took, "\nsection seconds (rank 0)", per_section)
    assert sum(took.values()) < 120, (took, per_section)
