"""The bridge to PyTorch (mlscale.bridge): mlscale's DataParallel, ZeRO-1 and FSDP give the
losses and final parameters of torch DDP, ZeroRedundancyOptimizer and FSDP2 (fully_shard)
on the same gloo group, within ``bridge.TOLERANCE`` (1e-10 relative) in float64; the mesh
coordinates agree with torch's DeviceMesh; the shard sizes are what each cuts. ONE launch
of 2 processes runs it all (``bridge.tour``). Skipped without torch or mpiexec."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import bridge
from mlscale.data import spirals
from mlscale.parallel.tp_comm import shard_range

pytestmark = pytest.mark.mpi
torch = pytest.importorskip("torch", reason='the bridge needs PyTorch: pip install "mlscale[torch]"')

from _mpi_batch import require_mpi  # noqa: E402

require_mpi()

P = 2
X, Y = spirals(n=128, num_classes=3, seed=0)
KW = dict(steps=12)


@pytest.fixture(scope="module")
def tour():
    return ms.launch(_tour, P, args=(X, Y), backend="torch", timeout=180)


def _tour(comm, X, Y):
    return bridge.tour(comm, X, Y, **KW)


@pytest.fixture(scope="module")
def on_sim():
    """mlscale's side alone on the simulator: the oracle for mlscale's side on torch's engine."""
    return ms.launch(lambda c: {m: bridge.train_mlscale(c, m, X, Y, **KW) for m in bridge.METHODS}, P)


@pytest.mark.parametrize("method", bridge.METHODS)
def test_mlscale_equals_torch_within_tolerance(tour, method):
    for r in range(P):
        (ml, mp), (tl, tp) = tour[r]["training"][method]["mlscale"], tour[r]["training"][method]["torch"]
        assert len(ml) == len(tl) == KW["steps"]
        assert bridge.rel_diff(ml, tl) < bridge.TOLERANCE, (method, r, ml, tl)
        assert bridge.rel_diff(mp, tp) < bridge.TOLERANCE, (method, r)
        assert ml[-1] < 0.95 * ml[0]  # it trains: a comparison of two frozen models would prove nothing
        # both moved the parameters away from the start, by the same amount
        start = ms.nn.MLP(bridge.DEFAULTS["sizes"], seed=0, dtype=np.float64).params
        assert bridge.rel_diff(mp, start) > 1e-3
    d = bridge.compare([t["training"] for t in tour])[method]
    assert max(d) < bridge.TOLERANCE


def test_every_rank_ends_with_the_same_parameters(tour):
    for method in bridge.METHODS:
        for side in ("mlscale", "torch"):
            p0 = tour[0]["training"][method][side][1]
            assert all(np.array_equal(t["training"][method][side][1], p0) for t in tour[1:]), (method, side)


def test_mlscale_side_on_torch_engine_equals_the_simulator(tour, on_sim):
    """The same mlscale code on sim and on TorchComm (ring collectives on both): equal to the bit."""
    for m in bridge.METHODS:
        for r in range(P):
            ml, mp = tour[r]["training"][m]["mlscale"]
            assert ml == on_sim[r][m][0] and np.array_equal(mp, on_sim[r][m][1]), m


def test_zero1_and_fsdp_are_one_adam_and_differ_from_sgd(tour):
    t = tour[0]["training"]
    assert bridge.rel_diff(t["zero1"]["mlscale"][1], t["fsdp"]["mlscale"][1]) < 1e-12
    assert bridge.rel_diff(t["zero1"]["mlscale"][1], t["ddp"]["mlscale"][1]) > 1e-3


def test_mesh_coordinates_equal_torch_device_mesh(tour):
    for r, t in enumerate(tour):
        mine, theirs = t["mesh"]
        assert mine == theirs == {"dp": 0, "tp": r}


def test_shards_flat_chunks_against_fsdp2_rows(tour):
    sizes = bridge.DEFAULTS["sizes"]
    for r, t in enumerate(tour):
        want_ml, want_t = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            n = fan_in * fan_out + fan_out
            lo, hi = shard_range(n, P, r)
            want_ml.append(hi - lo)
            rows = -(-fan_out // P)  # torch's Shard(0): ceil(rows / p) per rank, the last gets the rest
            mine = max(0, min(rows, fan_out - r * rows))
            want_t.append(mine * fan_in + mine)
        assert t["shards"] == {"mlscale": want_ml, "torch": want_t}
    assert sum(t["shards"]["torch"][-1] for t in tour) == sizes[-2] * sizes[-1] + sizes[-1]


def test_torch_mlp_copies_values_and_flat_params_round_trips():
    model = ms.nn.MLP([5, 7, 3], activation="tanh", seed=3, dtype=np.float64)
    net = bridge.torch_mlp(model)
    x = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), model.forward(x), rtol=1e-13, atol=1e-14)
    assert np.array_equal(bridge.flat_params(net, model), model.params)
    g = ms.nn.Sequential([ms.nn.layers.Linear(5, 4), ms.nn.layers.GELU(), ms.nn.layers.Linear(4, 2)], seed=1,
                         dtype=np.float64)
    np.testing.assert_allclose(bridge.torch_mlp(g)(torch.from_numpy(x)).detach().numpy(), g.forward(x),
                               rtol=1e-13, atol=1e-14)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="method='zero2'.*ddp"):
        bridge.train_mlscale(None, "zero2", X, Y)
    with pytest.raises(TypeError, match="unknown settings.*'lr'"):
        bridge.train_mlscale(None, "ddp", X, Y, lr=0.1)
    with pytest.raises(TypeError, match="backend='torch'"):
        ms.launch(lambda c: bridge.train_torch(c, "ddp", X, Y), 2)
    with pytest.raises(TypeError, match="float64"):
        bridge.torch_mlp(ms.nn.MLP([2, 2], dtype=np.float16))


def test_fsdp2_rule_matches_the_formula_in_the_library(tour):
    sizes = bridge.DEFAULTS["sizes"]
    for r, t in enumerate(tour):
        assert t["shards"]["torch"] == bridge.fsdp2_shard_numels(sizes, P, r)
    assert bridge.fsdp2_shard_numels((4, 3), 4, 3) == [0]  # 3 rows on 4 ranks: the last keeps nothing


def test_import_bridge_does_not_import_torch():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, mlscale.bridge; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
