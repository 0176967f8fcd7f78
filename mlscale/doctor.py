"""``mlscale doctor`` / ``ms.doctor()``: what this machine offers, and which engine
each level of the course will use here.

Levels: "simulated" (always the sim engine), "processes" (MPI if mpiexec works, else
sim), "gpus" (NCCL with 2+ GPUs, the sim engine on the one GPU with 1, sim on CPU
otherwise). Nothing here imports cupy or mpi4py at ``import mlscale`` time.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

LEVELS = ("simulated", "processes", "gpus")


@dataclass
class Report:
    python: str = ""
    numpy: str | None = None
    numba: str | None = None
    numba_cuda: str | None = None
    cuda_simulator: bool = False
    cupy: str | None = None
    gpus: list = field(default_factory=list)
    mpiexec: str | None = None
    mpi4py: str | None = None
    mpi_works: bool = False
    mpi_error: str | None = None
    nccl: bool = False
    torch: str | None = None
    torch_cuda: str | None = None  # the CUDA this torch was built with (None: a CPU-only build)
    torch_nccl: bool = False  # NCCL's library is installed with it
    notes: list = field(default_factory=list)

    def engine_for(self, level: str) -> str:
        """The engine a course level uses on this machine: "sim", "mpi" or "nccl"."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}: use one of {LEVELS}")
        if level == "processes":
            return "mpi" if self.mpi_works else "sim"
        if level == "gpus":
            return "nccl" if (self.nccl and len(self.gpus) >= 2 and self.mpi_works) else "sim"
        return "sim"

    def device_for(self, level: str) -> str:
        """"gpu" where the level runs on GPUs here (sim on one GPU counts), else "cpu"."""
        return "gpu" if level == "gpus" and self.gpus and self.cupy else "cpu"

    @property
    def best_backend(self) -> str:
        for level in ("gpus", "processes"):
            e = self.engine_for(level)
            if e != "sim":
                return e
        return "sim"

    def fallback_message(self, level: str) -> str | None:
        """A sentence for a notebook when a level falls back to the simulator."""
        if self.engine_for(level) != "sim" or level == "simulated":
            return None
        if level == "processes":
            return (
                "MPI is not available here, so this runs on simulated ranks instead "
                f"({self.mpi_error or 'no mpiexec'}). pip install 'mlscale[mpi]' to get real processes."
            )
        where = "one GPU" if len(self.gpus) == 1 else "no GPU"
        dev = self.device_for(level)
        return f"This machine has {where}: simulated ranks on the {dev.upper()} stand in for several GPUs."

    def torch_gpu(self):
        """Whether backend='torch', device='gpu' (NCCL) can run here, and what is missing."""
        if not self.torch_cuda:
            return ("NCCL: no, a CPU-only build (device='gpu' needs a CUDA build: pip install torch "
                    "--index-url https://download.pytorch.org/whl/cu126)")
        if not self.torch_nccl:
            return f"NCCL: not found beside this CUDA {self.torch_cuda} build (device='gpu' needs it)"
        if not self.gpus:
            return f"NCCL: built in (CUDA {self.torch_cuda}), but no GPU is visible here"
        if not self.cupy:
            major = self.torch_cuda.split(".")[0]
            return f"NCCL: yes (CUDA {self.torch_cuda}); device='gpu' also needs cupy: pip install cupy-cuda{major}x"
        return f"NCCL: yes (CUDA {self.torch_cuda}): device='gpu' runs on up to {len(self.gpus)} GPU(s)"

    def lines(self):
        def yn(v):
            return "yes" if v else "no"

        rows = [
            ("python", self.python),
            ("numpy", self.numpy or "MISSING"),
            ("numba", self.numba or "missing (pip install numba)"),
            ("numba-cuda", self.numba_cuda or "missing (pip install numba-cuda)"),
            ("CUDA simulator", yn(self.cuda_simulator)),
            ("cupy", self.cupy or "not installed"),
            ("GPUs", ", ".join(self.gpus) if self.gpus else "none"),
            ("mpiexec", self.mpiexec or "not found (pip install 'mlscale[mpi]')"),
            ("mpi4py", self.mpi4py or "not installed"),
            ("MPI works", yn(self.mpi_works) + ("" if self.mpi_works or not self.mpi_error else f" ({self.mpi_error})")),
            ("NCCL", yn(self.nccl)),
            ("torch", (f"{self.torch} (backend='torch' runs on its gloo; started by mpiexec); {self.torch_gpu()}"
                       if self.torch else "not installed (pip install 'mlscale[torch]' for backend='torch')")),
        ]
        out = ["mlscale doctor: what this machine offers"]
        out += [f"  {k:<15} {v}" for k, v in rows]
        out.append("course levels and the engine each uses here:")
        for level in LEVELS:
            e = self.engine_for(level)
            out.append(f"  {level:<15} {e} ({self.device_for(level)})")
        out += [f"  note: {n}" for n in self.notes]
        return out

    def __str__(self):
        return "\n".join(self.lines())

    def __repr__(self):
        return str(self)


def _version(mod):
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def _dist_version(dist):
    """An installed distribution's version, without importing it (importing numba here
    would fix its CUDA mode before a notebook sets NUMBA_ENABLE_CUDASIM)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _has_cuda_simulator():
    """numba's CUDA simulator is installed (numba-cuda's, or numba's built-in one), found
    on disk without importing numba."""
    import importlib.util

    for pkg, sub in (("numba_cuda", ("numba", "cuda", "simulator")), ("numba", ("cuda", "simulator"))):
        spec = importlib.util.find_spec(pkg)  # a top-level name: nothing is imported
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isfile(os.path.join(loc, *sub, "__init__.py")):
                return True
    return False


def find_mpiexec():
    """mpiexec next to this Python (a venv with the mpich wheel) first, then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    return shutil.which("mpiexec")


def _check_mpi(mpiexec, timeout=30):
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(1); c.rank or print(s)"
    try:
        p = subprocess.run(
            [mpiexec, "-n", "2", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"mpiexec -n 2 did not finish in {timeout} s"
    except OSError as e:
        return False, str(e)
    if p.returncode != 0 or p.stdout.split() != ["2"]:
        return False, (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:200]
    return True, None


def _torch_build():
    """(CUDA version of the installed torch or None, NCCL library found), read from its files:
    torch/version.py's ``cuda`` and the nvidia-nccl wheel or a libnccl beside torch; torch is
    not imported (seconds) and CUDA not initialised."""
    import importlib.util
    import re
    from importlib import metadata

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None, False
    if spec is None or not spec.submodule_search_locations:
        return None, False
    root = list(spec.submodule_search_locations)[0]
    try:
        with open(os.path.join(root, "version.py")) as f:
            m = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    except OSError:
        return None, False
    cuda = m.group(1) if m else None
    nccl = any((d.metadata["Name"] or "").lower().startswith("nvidia-nccl") for d in metadata.distributions())
    if not nccl:
        lib = os.path.join(root, "lib")
        nccl = os.path.isdir(lib) and any(n.startswith("libnccl") for n in os.listdir(lib))
    return cuda, bool(cuda) and nccl


def _gpus():
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.split(" (UUID")[0] for ln in p.stdout.splitlines() if ln.startswith("GPU")]


def doctor(check_mpi=True, verbose=True) -> Report:
    """Inspect this machine; print the report (``verbose``) and return it."""
    r = Report(python=sys.version.split()[0])
    r.numpy = _version("numpy")
    r.numba = _dist_version("numba")  # read from the metadata: numba is not imported here
    r.numba_cuda = _dist_version("numba-cuda")
    r.cuda_simulator = bool(r.numba) and _has_cuda_simulator()
    r.gpus = _gpus()
    if r.gpus:
        r.cupy = _version("cupy")
        r.nccl = bool(r.cupy) and _version("cupy.cuda.nccl") is not None
    r.mpiexec = find_mpiexec()
    r.mpi4py = _version("mpi4py")
    r.torch = _dist_version("torch")  # from the metadata: importing torch takes seconds
    if r.torch:
        r.torch_cuda, r.torch_nccl = _torch_build()
    if r.mpiexec and r.mpi4py and check_mpi:
        r.mpi_works, r.mpi_error = _check_mpi(r.mpiexec)
    elif not r.mpi4py:
        r.mpi_error = "mpi4py is not installed"
    elif not r.mpiexec:
        r.mpi_error = "no mpiexec found"
    else:
        r.mpi_error = "not checked"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        r.notes.append("NUMBA_ENABLE_CUDASIM=1: numba-CUDA kernels run in the simulator")
    if verbose:
        print(r)
    return r
