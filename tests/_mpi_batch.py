"""What the MPI test files share: the skip guard, and ONE mpiexec launch per world size
that runs every section of checks in turn (each start costs about half a second), with
the tests reading their section of the result."""
import time
import traceback

import pytest

import mlscale as ms


def require_mpi():
    """Skip the calling test module, with the fix, where mpi4py or mpiexec is missing."""
    try:
        import mpi4py  # noqa: F401
        from mlscale.comm._mpi_launch import find_mpiexec

        return find_mpiexec()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f'needs mpi4py and mpiexec ({e}); pip install "mlscale[mpi]"', allow_module_level=True)


def run_sections(comm, sections):
    """On every rank: each section in turn; one that fails records its traceback and the
    rest still run (a failure in one must not hide the others). {name: (status, value, s)}"""
    out = {}
    for name, fn in sections.items():
        t0 = time.perf_counter()
        try:
            out[name] = ("ok", fn(comm))
        except Exception:
            out[name] = ("error", traceback.format_exc())
        comm.barrier()
        out[name] += (time.perf_counter() - t0,)
    return out


class Batches:
    """One launch per world size of ``sections`` ({name: fn(comm)}), cached."""

    def __init__(self, sections, timeout=120, backend="mpi"):
        self.sections, self.timeout, self.cache, self.backend = sections, timeout, {}, backend

    def batch(self, p):
        if p not in self.cache:
            t0 = time.perf_counter()
            res = ms.launch(run_sections, p, args=(self.sections,), backend=self.backend, timeout=self.timeout)
            self.cache[p] = (res, time.perf_counter() - t0)
        return self.cache[p][0]

    def took(self, p):
        """Seconds the launch for world size p took."""
        self.batch(p)
        return self.cache[p][1]

    def section(self, p, name):
        """Every rank's value of section ``name`` (asserting it ran without error)."""
        res = self.batch(p)
        assert len(res) == p
        for r, per_rank in enumerate(res):
            status, value, _ = per_rank[name]
            assert status == "ok", f"rank {r} of {p}, section {name}:\n{value}"
        return [per_rank[name][1] for per_rank in res]
