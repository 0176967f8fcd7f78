"""Test set-up shared by every test module.

Without a GPU, numba's CUDA kernels run in numba's CUDA simulator: the variable must
be set before numba is first imported, so it is set here, at collection time.
"""
import os
import shutil

import pytest


def _has_gpu():
    if os.environ.get("MLSCALE_FORCE_NO_GPU"):
        return False
    return shutil.which("nvidia-smi") is not None and os.path.exists("/dev/nvidia0")


HAS_GPU = _has_gpu()
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _has_cupy_gpu():
    if not HAS_GPU:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cupy_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with cupy (none here); runs on Colab or a GPU box")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
