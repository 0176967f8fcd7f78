"""FSDP on 4 real MPI processes: ZeRO-2 and ZeRO-3 of the GPT equal one device (float64,
1e-12) and the same program on sim bit for bit; the ledger's peaks are the same.
One mpiexec launch runs every section (``_mpi_batch``). Run alone:
``pytest -m mpi tests/test_fsdp_mpi.py``."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.parallel import assemble, train_single

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402
from test_fsdp import CFG, _gpt, _gpt_batches  # noqa: E402

MPIEXEC = require_mpi()
SECTIONS = {f"zero{s}": (lambda c, s=s: _gpt(c, s, _gpt_batches(n=2, b=8))) for s in (2, 3)}
BATCHES = Batches(SECTIONS)


@pytest.mark.parametrize("stage", [2, 3])
def test_fsdp_on_mpi_equals_one_device_and_sim(stage):
    res = BATCHES.section(4, f"zero{stage}")
    batches = _gpt_batches(n=2, b=8)
    losses, ref = train_single(CFG, batches, lr=1e-2)
    np.testing.assert_allclose(assemble([r[0] for r in res], ref.num_params), ref.params, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.mean([r[1] for r in res], axis=0), losses, rtol=1e-12)
    sim = ms.launch(SECTIONS[f"zero{stage}"], 4)
    for r, s in zip(res, sim):
        assert r[1] == s[1] and r[2] == s[2] and r[3] == s[3]
        for (a, x), (b, y) in zip(r[0], s[0]):
            assert a == b
            np.testing.assert_array_equal(x, y)
