"""Harris's reduction ladder in numba-CUDA (simulator without a GPU), each version
against np.sum; the CUDA C twins (kernels/reduce.cu) through CuPy on a GPU."""
import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops._common import BLOCK
from mlscale.ops.reduce_ladder import SUMS, VERSIONS

SIZES = [1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("version", VERSIONS)
def test_ladder_sums_like_numpy(version, n):
    rng = np.random.default_rng(n)
    ints = rng.integers(-50, 50, n).astype(np.float32)      # exact in any summation order
    assert SUMS[version](ints) == float(ints.sum(dtype=np.int64))
    x = rng.standard_normal(n).astype(np.float32)
    assert SUMS[version](x) == pytest.approx(float(np.sum(x, dtype=np.float64)),
                                             abs=1e-5 * np.sqrt(n))


def test_ladder_is_exported_as_sum_v0_to_v6():
    assert [f.__name__ for f in SUMS] == [f"sum_v{v}" for v in range(7)]
    assert ops.sum_v6 is SUMS[6]


def test_ladder_runs_on_device_arrays_and_rejects_float64():
    from numba import cuda

    x = np.arange(10, dtype=np.float32)
    assert ops.sum_v3(cuda.to_device(x)) == 45.0
    with pytest.raises(TypeError, match=r"sum_v2: the ladder sums float32 .* got float64"):
        ops.sum_v2(np.ones(3))


@pytest.mark.gpu
@pytest.mark.parametrize("version", VERSIONS)
def test_cuda_c_ladder_with_cupy(version):
    for n in SIZES + [1 << 20]:
        x = np.random.default_rng(n).integers(-50, 50, n).astype(np.float32)
        assert ops.sum_cupy(x, version) == float(x.sum(dtype=np.int64))


def test_first_pass_grid_covers_every_element():
    # v0..v5 read one (v3..v5: two) elements per thread and have no grid-stride loop: a grid
    # capped at 65535 blocks would silently drop everything past 65535 * 128 (or 256) elements
    from mlscale.ops import reduce_ladder as L

    for n in (1, 127, 128, 389, 65535 * 128 + 1, 65535 * 256 + 1000, 1 << 28):
        for v in range(6):
            per_thread = 1 if v <= 2 else 2
            assert L._blocks(v, n) * L.BLOCK * per_thread >= n, (v, n)
        assert 1 <= L._blocks(6, n) <= L.MAX_BLOCKS_V6
