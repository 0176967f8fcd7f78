"""ZeRO-2/3 on the dp dim of 3D training on real MPI processes: (dp, pp, tp) = (2, 2, 1)
and (2, 1, 2) with SP on 4 ranks, and (2, 2, 1) ZeRO-3 with prefetch and overlap (MPI runs
``comm.start`` in order), equal one device (float64, 1e-12) and the same program on
``sim`` bit for bit. One mpiexec launch runs all three sections (``_mpi_batch``)."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import nn
from mlscale.parallel import global_losses, shard_gpt_state, stage_params, train_3d, train_single

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402

MPIEXEC = require_mpi()
CFG = nn.GPTConfig(vocab_size=11, seq_len=8, d_model=16, num_heads=4, num_layers=2)
LR = 1e-2


def _batches():
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))) for _ in range(3)]


def _z2(comm):
    return train_3d(comm, CFG, _batches(), 2, 2, 1, 2, LR, False, 2)


def _z3_sp(comm):
    return train_3d(comm, CFG, _batches(), 2, 1, 2, 2, LR, True, 3)


def _z3_prefetch(comm):  # MPI runs comm.start in order: the same numbers, no overlap
    return train_3d(comm, CFG, _batches(), 2, 2, 1, 2, LR, False, 3, prefetch=True, overlap=True)


SECTIONS = {"2x2x1_z2": _z2, "2x1x2_sp_z3": _z3_sp, "2x2x1_z3_prefetch": _z3_prefetch}
BATCHES = Batches(SECTIONS)


@pytest.mark.parametrize("name,dims,sp", [("2x2x1_z2", (2, 2, 1), False), ("2x1x2_sp_z3", (2, 1, 2), True),
                                         ("2x2x1_z3_prefetch", (2, 2, 1), False)])
def test_zero23_on_mpi_equals_one_device_and_sim(name, dims, sp):
    res = BATCHES.section(4, name)
    losses, ref = train_single(CFG, _batches(), lr=LR)
    np.testing.assert_allclose(global_losses(res), losses, rtol=1e-12, atol=1e-12)
    full = ref.named_params()
    for rank, named in enumerate(stage_params(res)):
        want = shard_gpt_state(full, CFG, dims[2], res[rank]["coords"]["tp"], sp)
        assert named
        for k, v in named.items():
            np.testing.assert_allclose(v, want[k], rtol=1e-12, atol=1e-12, err_msg=f"rank {rank} {k}")
    sim = ms.launch(SECTIONS[name], 4)
    for r, s in zip(res, sim):
        assert r["coords"] == s["coords"] and r["losses"] == s["losses"] and r["memory"] == s["memory"]
        for (a, x), (b, y) in zip(r["shards"], s["shards"]):
            assert a == b
            np.testing.assert_array_equal(x, y)
