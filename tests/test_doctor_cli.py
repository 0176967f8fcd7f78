"""mlscale doctor and the command line."""
import subprocess
import sys

import pytest

import mlscale as ms
from mlscale.doctor import Report


def test_engine_choice_per_level():
    r = Report(mpi_works=True, gpus=["GPU 0", "GPU 1"], cupy="13", nccl=True)
    assert [r.engine_for(lv) for lv in ("simulated", "processes", "gpus")] == ["sim", "mpi", "nccl"]
    assert r.best_backend == "nccl"
    r = Report(mpi_works=False, gpus=["GPU 0"], cupy="13", nccl=True)
    assert r.engine_for("processes") == "sim" and r.engine_for("gpus") == "sim"
    assert r.device_for("gpus") == "gpu" and "one GPU" in r.fallback_message("gpus")
    r = Report(mpi_error="no mpiexec found")
    assert r.best_backend == "sim" and "no mpiexec found" in r.fallback_message("processes")
    with pytest.raises(ValueError, match="unknown level"):
        r.engine_for("cluster")


def test_doctor_reports_this_machine(capsys):
    r = ms.doctor(check_mpi=False)
    out = capsys.readouterr().out
    assert r.numpy and "course levels" in out and "simulated" in out
    assert r.engine_for("simulated") == "sim"


def test_import_mlscale_does_not_import_cupy_or_mpi4py():
    code = "import sys, mlscale; print('cupy' in sys.modules, 'mpi4py' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_cli_doctor_and_version():
    p = subprocess.run([sys.executable, "-m", "mlscale.cli", "doctor", "--no-mpi-check"], capture_output=True, text=True)
    assert p.returncode == 0 and "mlscale doctor" in p.stdout
    p = subprocess.run([sys.executable, "-m", "mlscale.cli", "version"], capture_output=True, text=True)
    assert p.stdout.strip() == ms.__version__
