"""Ulysses and ring attention on real MPI processes (p = 2 and 3): equal to full attention,
forward and gradients. ``comm.start`` runs the K/V shift at once there (no overlap, same
results). Run alone: ``pytest -m mpi tests/test_context_mpi.py``."""
import numpy as np
import pytest

import mlscale as ms
from mlscale import parallel as mp
from mlscale.nn.attention import attention_backward, attention_forward

pytestmark = pytest.mark.mpi

from _mpi_batch import require_mpi  # noqa: E402

MPIEXEC = require_mpi()


def _both(comm, data):
    p, r = comm.world_size, comm.rank
    q, k, v, dy = (mp.cp_shard(x, p, r, zigzag=True) for x in data)
    out, cache = mp.ring_attention(comm, q, k, v, causal=True, zigzag=True)
    ring = (out,) + mp.ring_attention_backward(comm, dy, cache)
    if data[0].shape[1] % p:
        return ring, None
    q, k, v, dy = (mp.cp_shard(x, p, r, zigzag=False) for x in data)
    out, cache = mp.ulysses_attention(comm, q, k, v, causal=True)
    return ring, (out,) + mp.ulysses_attention_backward(comm, dy, cache)


@pytest.mark.parametrize("p", [2, 3])
def test_ring_and_ulysses_on_mpi_equal_full_attention(p):
    rng = np.random.default_rng(p)
    data = [rng.normal(size=(1, 4, 12, 4)) for _ in range(4)]
    y, c = attention_forward(*data[:3], causal=True)
    want = (y,) + attention_backward(data[3], c)
    res = ms.launch(_both, p, args=(data,), backend="mpi")
    for i in range(4):
        np.testing.assert_allclose(mp.cp_unshard([r[0][i] for r in res], True), want[i], rtol=0, atol=1e-12)
        if p == 2:
            np.testing.assert_allclose(mp.cp_unshard([r[1][i] for r in res], False), want[i], rtol=0, atol=1e-12)
    assert (res[0][1] is None) == (p == 3)  # 4 heads do not split over 3 ranks: Ulysses skipped
