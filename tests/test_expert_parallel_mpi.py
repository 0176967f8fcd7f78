"""ExpertParallelMoE on 2 real MPI processes (mpi4py + MPICH, MPI's own Alltoallv and the
pairwise exchange): forward output, input grads, expert grads and the summed router grad
equal the single-device oracle nn.MoE(groups=2) to 1e-12, dropped tokens included.
Run alone: ``pytest -m mpi tests/test_expert_parallel_mpi.py``."""
import numpy as np
import pytest

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()
D, DFF, T, E = 6, 5, 10, 4
KW = dict(top_k=2, capacity_factor=1.0, renormalize=True, aux_loss_coef=0.1, z_loss_coef=0.01)


def _data():
    rng = np.random.default_rng(4)
    return rng.standard_normal((2 * T, D)), rng.standard_normal((2 * T, D))


def _run(algorithm):
    def section(comm):
        from mlscale import nn
        from mlscale.parallel import ExpertParallelMoE

        x, dy = _data()
        layer = ExpertParallelMoE(comm, D, DFF, E, algorithm=algorithm, **KW)
        model = nn.Sequential([layer], seed=3, dtype=np.float64)
        mine = slice(comm.rank * T, (comm.rank + 1) * T)
        y = model.forward(x[mine])
        model.zero_grad()
        dx = model.backward(dy[mine])
        return y, dx, {k: v.copy() for k, v in model.named_grads().items()}, layer.dropped, layer.first

    return section


BATCHES = Batches({"native": _run(None), "pairwise": _run("pairwise")})


@pytest.mark.parametrize("algorithm", ["native", "pairwise"])
def test_expert_parallel_on_mpi_equals_one_device(algorithm):
    from mlscale import nn

    x, dy = _data()
    one = nn.MoE(D, DFF, E, groups=2, **KW)
    model = nn.Sequential([one], seed=3, dtype=np.float64)
    y1 = model.forward(x)
    model.zero_grad()
    dx1 = model.backward(dy)
    g1 = model.named_grads()
    res = BATCHES.section(2, algorithm)
    assert one.dropped > 0 and sum(r[3] for r in res) == one.dropped
    router = 0
    for rank, (y, dx, grads, dropped, first) in enumerate(res):
        np.testing.assert_allclose(y, y1[rank * T:(rank + 1) * T], rtol=0, atol=1e-12)
        np.testing.assert_allclose(dx, dx1[rank * T:(rank + 1) * T], rtol=0, atol=1e-12)
        for name in ("w1", "b1", "w2", "b2"):
            key = f"0.experts.{name}"
            np.testing.assert_allclose(grads[key], g1[key][first:first + E // 2], rtol=0, atol=1e-12)
        router = router + grads["0.router.weight"]
    np.testing.assert_allclose(router, g1["0.router.weight"], rtol=0, atol=1e-12)
