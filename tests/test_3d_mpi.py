"""3D parallel training on real MPI processes: (dp, pp, tp) = (1, 2, 2) on 4 ranks, with
and without sequence parallelism, equal to one device (float64, 1e-12) and to the SAME
program on ``sim`` bit for bit (ring collectives and point-to-point messages carry the
same bytes in the same order on both engines). One mpiexec launch runs every section
(``_mpi_batch``). Run alone: ``pytest -m mpi tests/test_3d_mpi.py``."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import global_losses, shard_gpt_state, train_3d, train_single

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()
TOL = dict(rtol=1e-12, atol=1e-12)
CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
LR = 1e-2


def _batches():
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))) for _ in range(3)]


def _tp_only(comm):
    return train_3d(comm, CFG, _batches(), 1, 2, 2, 2, LR, False)


def _sp(comm):
    return train_3d(comm, CFG, _batches(), 1, 2, 2, 2, LR, True)


def _dp_zero(comm):
    return train_3d(comm, CFG, _batches(), 2, 1, 2, 1, LR, True)


SECTIONS = {"1x2x2": _tp_only, "1x2x2_sp": _sp, "2x1x2_sp": _dp_zero}
BATCHES = Batches(SECTIONS)


@pytest.mark.parametrize("name,dims,sp", [("1x2x2", (1, 2, 2), False), ("1x2x2_sp", (1, 2, 2), True),
                                          ("2x1x2_sp", (2, 1, 2), True)])
def test_3d_on_mpi_equals_one_device_and_sim(name, dims, sp):
    res = BATCHES.section(4, name)
    losses, ref = train_single(CFG, _batches(), lr=LR)
    np.testing.assert_allclose(global_losses(res), losses, **TOL)
    full = ref.named_params()
    for rank, r in enumerate(res):
        want = shard_gpt_state(full, CFG, dims[2], r["coords"]["tp"], sp)
        for k, v in r["params"].items():
            np.testing.assert_allclose(v, want[k], **TOL, err_msg=f"rank {rank} {k}")
    sim = ms.launch(SECTIONS[name], 4)
    for r, s in zip(res, sim):
        assert r["coords"] == s["coords"] and r["losses"] == s["losses"]
        for k in s["params"]:
            np.testing.assert_array_equal(r["params"][k], s["params"][k])
