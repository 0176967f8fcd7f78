"""The device mesh on 4 real MPI processes: the same coordinates, sub-communicator
members and all_reduce results as on sim, for a (2, 2) mesh in both rank orders and a
1-D mesh. One mpiexec launch runs every section (``_mpi_batch``). Run alone:
``pytest -m mpi tests/test_mesh_mpi.py``."""
import pytest

import mlscale as ms

pytestmark = pytest.mark.mpi

from _mpi_batch import Batches, require_mpi  # noqa: E402
from test_mesh import _probe  # noqa: E402

MPIEXEC = require_mpi()
CASES = {"dp2xtp2": ({"dp": 2, "tp": 2}, None), "dp2xtp2_dp_fastest": ({"dp": 2, "tp": 2}, "dp-tp"),
         "dp4": ({"dp": 4}, None), "pp2xcp1xtp2": ({"pp": 2, "cp": 1, "tp": 2}, "megatron")}
BATCHES = Batches({name: (lambda c, s=s, o=o: _probe(c, s, o)) for name, (s, o) in CASES.items()})


@pytest.mark.parametrize("name", list(CASES))
def test_mesh_on_mpi_equals_sim(name):
    sizes, order = CASES[name]
    got = BATCHES.section(4, name)
    assert got == ms.launch(_probe, 4, args=(sizes, order))
    assert [r["coords"] for r in got] == ms.parallel.mesh_layout(sizes, order)
