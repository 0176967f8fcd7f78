"""mlscale doctor and the command line."""
import importlib.util
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


def test_the_methods_import_without_numba_cupy_or_mpi4py():
    # numba costs about a second to import and must see NUMBA_ENABLE_CUDASIM first (notebook
    # 10 sets it): only mlscale.ops loads it, on first use
    mods = ["mlscale.train", "mlscale.check", "mlscale.viz", "mlscale.decentralized", "mlscale.compress",
            "mlscale.parallel", "mlscale.serving", "mlscale.collectives.hierarchical"]
    if importlib.util.find_spec("mlscale.federated") is not None:
        mods.append("mlscale.federated")
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            "print([m for m in ('cupy', 'mpi4py', 'numba') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {mods} loaded {out.strip()}"


def test_cli_doctor_and_version():
    p = subprocess.run([sys.executable, "-m", "mlscale.cli", "doctor", "--no-mpi-check"], capture_output=True, text=True)
    assert p.returncode == 0 and "mlscale doctor" in p.stdout
    p = subprocess.run([sys.executable, "-m", "mlscale.cli", "version"], capture_output=True, text=True)
    assert p.stdout.strip() == ms.__version__


def test_doctor_does_not_import_numba():
    # a notebook calls ms.doctor() first and may set NUMBA_ENABLE_CUDASIM after it (notebook
    # 10): numba reads the variable once, on import, so doctor must find it without importing
    code = ("import sys, mlscale as ms; r = ms.doctor(check_mpi=False, verbose=False); "
            "print('numba' in sys.modules, bool(r.numba), r.cuda_simulator)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imported, has_numba, sim = out.split()
    assert imported == "False"
    assert has_numba == "True" and sim == "True"  # the dev environment has numba and numba-cuda


def test_doctor_says_whether_the_torch_engine_can_run():
    from mlscale.doctor import Report

    assert any("pip install 'mlscale[torch]'" in line for line in Report(torch=None).lines())
    assert any(line.split()[:2] == ["torch", "2.13.0"] for line in Report(torch="2.13.0").lines())


def _torch_row(**kw):
    from mlscale.doctor import Report

    return [line for line in Report(torch="2.13.0", **kw).lines() if line.split()[:1] == ["torch"]][0]


def test_doctor_says_whether_torch_can_run_nccl():
    assert "NCCL: no, a CPU-only build" in _torch_row() and "whl/cu126" in _torch_row()
    assert "NCCL: not found" in _torch_row(torch_cuda="12.6")
    assert "no GPU is visible" in _torch_row(torch_cuda="12.6", torch_nccl=True)
    assert "pip install cupy-cuda12x" in _torch_row(torch_cuda="12.6", torch_nccl=True, gpus=["GPU 0: H100"])
    assert "device='gpu' runs on up to 2 GPU(s)" in _torch_row(torch_cuda="12.6", torch_nccl=True,
                                                               gpus=["GPU 0", "GPU 1"], cupy="13.0")


def test_doctor_reads_the_torch_build_without_importing_torch():
    code = ("import sys; from mlscale.doctor import _torch_build; c, n = _torch_build(); "
            "import importlib.metadata as m; print('torch' in sys.modules, c, n, m.version('torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    imported, cuda, nccl, version = out.stdout.split()
    assert imported == "False", out.stderr
    if version.endswith("+cpu"):
        assert cuda == "None" and nccl == "False"
    else:  # pragma: no cover - a CUDA build: its version.py names the CUDA
        import torch

        assert cuda == str(torch.version.cuda)
