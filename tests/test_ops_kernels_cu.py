"""The CUDA C sources: every kernels/*.cu compiles with nvcc for sm_75, sm_80 and sm_90
(when nvcc is on PATH), the loader finds them in the source tree and in an installed
wheel, and the wheel ships them."""
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import mlscale.ops as ops
from mlscale.ops import _common

REPO = Path(__file__).resolve().parents[1]
CU_FILES = sorted((REPO / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")
# the kernels each op module launches through cupy, by .cu file
EXPECTED_CU = {"adam_step.cu", "sgd_step.cu", "reduce_chunk.cu", "weighted_sum.cu", "norm.cu",
               "reduce.cu", "qsgd.cu", "sign_compress.cu", "topk_compress.cu", "robust.cu"}


def test_every_op_has_its_cu_file():
    assert {p.name for p in CU_FILES} >= EXPECTED_CU


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: install the CUDA toolkit to "
                                         "compile-check kernels/*.cu")
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_with_nvcc(cu, arch, tmp_path):
    t0 = time.perf_counter()
    out = tmp_path / (cu.stem + ".cubin")
    r = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-std=c++14", "-Werror",
                        "all-warnings", "-Xptxas", "-v", "-o", str(out), str(cu)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"nvcc {cu.name} for {arch} failed:\n{r.stderr}"
    # ptxas -v: no kernel spills registers to local memory (a spill turns a streaming
    # kernel's register traffic into DRAM traffic and costs the bandwidth it lives on)
    spills = [line.strip() for line in r.stderr.splitlines() if "spill" in line]
    assert spills, f"ptxas -v printed no resource usage for {cu.name}:\n{r.stderr}"
    bad = [line for line in spills if "0 bytes spill stores, 0 bytes spill loads" not in line]
    assert not bad, f"{cu.name} on {arch} spills registers: {bad}"
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"nvcc took {elapsed:.1f}s for {cu.name}"
    # every extern "C" kernel the wrappers look up by name is in the binary
    names = [line.split("void", 1)[1].split("(")[0].strip()
             for line in cu.read_text().splitlines() if line.startswith('extern "C" __global__')]
    blob = out.read_bytes()
    assert names and all(n.encode() in blob for n in names)


def test_loader_finds_sources_in_the_tree():
    p = ops.kernel_path("adam_step.cu")
    assert p == REPO / "kernels" / "adam_step.cu"
    assert "adam_step_f32" in ops.kernel_source("adam_step.cu")
    with pytest.raises(FileNotFoundError, match="nope.cu' not found in .*mlscale.kernels"):
        ops.kernel_path("nope.cu")


def test_loader_prefers_the_installed_location(tmp_path, monkeypatch):
    pkg = tmp_path / "mlscale"
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "kernels" / "adam_step.cu").write_text("// installed copy")
    fake_common = pkg / "ops" / "_common.py"
    monkeypatch.setattr(_common, "__file__", str(fake_common))
    assert _common.kernel_path("adam_step.cu") == pkg / "kernels" / "adam_step.cu"
    assert _common.kernel_source("adam_step.cu") == "// installed copy"


@pytest.mark.slow
def test_wheel_ships_the_cu_files(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = tmp_path.glob("mlscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("mlscale/kernels/") and n.endswith(".cu")}
    assert shipped == {p.name for p in CU_FILES}
    assert "mlscale/kernels/README.md" in names
    assert "mlscale/ops/adam_step.py" in names
