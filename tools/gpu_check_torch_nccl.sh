#!/usr/bin/env bash
# The GPU check of backend="torch", device="gpu" (TorchComm over NCCL, mlscale/comm/torch_nccl.py),
# in one command on a machine with a CUDA GPU:
#     bash tools/gpu_check_torch_nccl.sh            # uses $PYTHON (default: .venv/bin/python, else python3)
# It prints what the machine offers, then runs the tests that need a GPU (tests/test_torch_nccl.py,
# marked gpu: every collective and algorithm on NCCL, CuPy point to point, a non-default CuPy stream,
# split, torchrun) and the CPU tests of the same code path. Needs a CUDA build of torch, cupy-cuda12x,
# mpi4py + mpiexec (ms.launch starts the ranks with it). Exit status: pytest's.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
export PATH="$(dirname "$PY"):$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MLSCALE_TORCH_TIMEOUT=${MLSCALE_TORCH_TIMEOUT:-120}
echo "== machine"
nvidia-smi -L || echo "nvidia-smi: not found (no NVIDIA driver?)"
"$PY" - <<'PY'
import torch, torch.distributed as dist
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      "GPUs", torch.cuda.device_count(), "NCCL", dist.is_nccl_available(),
      "nccl version", torch.cuda.nccl.version() if torch.cuda.is_available() else None)
try:
    import cupy
    print("cupy", cupy.__version__, "GPUs", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy: not usable:", type(e).__name__, e, "-> pip install cupy-cuda12x")
PY
"$PY" -m mlscale.cli doctor 2>/dev/null | grep -E "GPUs|NCCL|torch" || true
echo "== tests (gpu-marked ones run only where cupy and torch both see a GPU)"
"$PY" -m pytest -q -ra -p no:cacheprovider tests/test_torch_nccl.py "$@"
