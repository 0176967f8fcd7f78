"""The GPU-kernel exercise checker (notebook 10) accepts right kernels and rejects the
usual wrong ones; the roofline helpers and the bandwidth plot. Without a GPU the kernels
run in numba's CUDA simulator (conftest sets NUMBA_ENABLE_CUDASIM=1)."""
import importlib

import numpy as np
import pytest
from numba import cuda

from mlscale.check import kernels as ck
from mlscale.check.core import HINTS, SOLUTIONS
from mlscale.ops import BLOCK, roofline

# ---- kernels a learner might write (top level: the simulator needs it) -----------------


@cuda.jit
def stub(dst, src, scale):
    raise NotImplementedError("write the grid-stride loop")


@cuda.jit
def no_bounds_check(dst, src, scale):
    i = cuda.grid(1)
    dst[i] = (dst[i] + src[i]) * scale


@cuda.jit
def no_grid_stride(dst, src, scale):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = (dst[i] + src[i]) * scale


@cuda.jit
def forgets_scale(dst, src, scale):
    i = cuda.grid(1)
    while i < dst.size:
        dst[i] = dst[i] + src[i]
        i += cuda.gridsize(1)


@cuda.jit
def scales_src_only(dst, src, scale):
    i = cuda.grid(1)
    while i < dst.size:
        dst[i] = dst[i] + src[i] * scale
        i += cuda.gridsize(1)


@cuda.jit
def writes_src(dst, src, scale):
    i = cuda.grid(1)
    while i < dst.size:
        dst[i] = (dst[i] + src[i]) * scale
        src[i] = 0
        i += cuda.gridsize(1)


@cuda.jit
def block_stride(dst, src, scale):
    # strides by the block, not the grid: every element is updated once per block
    i = cuda.grid(1)
    while i < dst.size:
        dst[i] = (dst[i] + src[i]) * scale
        i += cuda.blockDim.x


def plain_python(dst, src, scale):
    for i in range(dst.size):
        dst[i] = (dst[i] + src[i]) * scale


# ---- the checker -----------------------------------------------------------------------
def test_accepts_the_solution_and_the_library_kernel():
    res = ck.reduce_chunk_kernel(ck.reduce_chunk_solution, verbose=False)
    assert res.passed, res.summary()
    assert res.cases == 2 * len(ck.SIZES) + 1 == 9
    lib = importlib.import_module("mlscale.ops.reduce_chunk")._reduce_chunk_cuda
    assert ck.reduce_chunk_kernel(lib, verbose=False).passed


def test_sizes_are_the_awkward_ones():
    assert ck.SIZES == (1, BLOCK - 1, BLOCK, 3 * BLOCK + 5)


def test_stub_is_not_implemented_and_says_so(capsys):
    res = ck.reduce_chunk_kernel(stub)
    assert res.not_implemented and not res.passed
    assert "not implemented yet" in capsys.readouterr().out


def test_rejects_a_missing_bounds_check():
    res = ck.reduce_chunk_kernel(no_bounds_check, verbose=False)
    assert not res.passed
    # n = 1, 127 and 389 overhang the last block; n = 128 fits exactly (and the small
    # grids and the single thread miss elements instead)
    msgs = "\n".join(res.failures)
    assert "past the end" in msgs and "if i < dst.size" in msgs
    assert any(f.startswith("n=1, one thread per element") and "past the end" in f
               for f in res.failures)
    assert not any(f.startswith("n=128, one thread per element") for f in res.failures)


def test_rejects_no_grid_stride_loop_only_where_the_grid_is_too_small():
    res = ck.reduce_chunk_kernel(no_grid_stride, verbose=False)
    assert not res.passed
    failed = {f.split(":")[0] for f in res.failures}
    # one thread per element passes; 2 x 32 threads miss elements for n = 127, 128, 389
    assert not any("one thread per element" in f for f in failed)
    assert len(res.failures) == 4                      # 3 small-grid sizes + single thread
    assert all("grid-stride" in f for f in res.failures)
    assert any("elements 64..388 were not updated" in f for f in res.failures)
    assert any("elements 1..388 were not updated" in f for f in res.failures)


def test_rejects_a_wrong_scale():
    res = ck.reduce_chunk_kernel(forgets_scale, verbose=False)
    assert not res.passed and len(res.failures) == res.cases
    assert all("dst is dst + src: multiply by scale" in f for f in res.failures)
    res = ck.reduce_chunk_kernel(scales_src_only, verbose=False)
    assert not res.passed and len(res.failures) == res.cases
    assert "expected (dst + src) * scale" in res.failures[0]


def test_rejects_writing_src_and_a_wrong_stride():
    res = ck.reduce_chunk_kernel(writes_src, verbose=False)
    assert not res.passed and all("src was changed" in f for f in res.failures)
    res = ck.reduce_chunk_kernel(block_stride, verbose=False)
    assert not res.passed
    # with one block the block stride is the grid stride: those cases pass
    assert any("n=389, one thread per element" in f for f in res.failures)
    assert not any("a single thread" in f for f in res.failures)


def test_rejects_a_function_that_is_not_a_kernel():
    res = ck.reduce_chunk_kernel(plain_python, verbose=False)
    assert not res.passed and "decorate it with @cuda.jit" in res.failures[0]


def test_hint_and_solution_are_registered(capsys):
    assert "cuda.gridsize(1)" in HINTS["reduce_chunk_kernel"]
    assert SOLUTIONS["reduce_chunk_kernel"] is ck.reduce_chunk_solution.py_func
    from mlscale.check import solution

    solution("reduce_chunk_kernel")
    out = capsys.readouterr().out
    assert out.startswith("import numba.cuda as cuda\n") and "@cuda.jit" in out and "i += stride" in out


# ---- roofline helpers ------------------------------------------------------------------
def test_device_peak_table():
    assert roofline.device_peak_gb_s("Tesla T4") == 320.0
    assert roofline.device_peak_gb_s("NVIDIA H100 80GB HBM3") == 3350.0
    assert roofline.device_peak_gb_s("NVIDIA H100 PCIe") == 2000.0
    assert roofline.device_peak_gb_s("NVIDIA A100-SXM4-80GB") == 2039.0
    assert roofline.device_peak_gb_s("NVIDIA A100-SXM4-40GB") == 1555.0
    assert roofline.device_peak_gb_s("Some Other GPU") is None
    with pytest.raises(TypeError, match="name must be a str"):
        roofline.device_peak_gb_s(3)


def test_add_bandwidth_and_throughput_are_consistent():
    n = 1 << 14
    bw = roofline.add_bandwidth(n, repeats=2)
    assert set(bw) == {"np.add(a, b, out=c)", "np.add(a, b, out=a)", "numba c = a + b",
                       "numba a = a + b"}
    assert all(v > 0 for v in bw.values())
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    t = roofline.throughput({"copy": lambda: np.copyto(b, a), "add": lambda: np.add(a, b, out=b)},
                            nbytes=8 * n, n_bound=n, repeats=2)
    assert set(t.seconds) == set(t.gb_s) == {"copy", "add"}
    for k in ("copy", "add"):                         # GB/s is the bytes over the best time
        assert t.gb_s[k] == pytest.approx(8 * n / t.seconds[k] / 1e9)
        assert t.fraction(k) == pytest.approx(t.gb_s[k] / t.bound_gb_s)
    assert t.bound_gb_s == max(t.bound_runs.values())
    assert t.speedup("copy", "add") == pytest.approx(t.seconds["add"] / t.seconds["copy"])


def test_throughput_rejects_bad_input():
    with pytest.raises(ValueError, match="fns is empty"):
        roofline.throughput({}, 8, 8)
    with pytest.raises(ValueError, match="device='tpu'"):
        roofline.throughput({"x": lambda: None}, 8, 8, device="tpu")
    with pytest.raises(ValueError, match="n=0 must be a positive int"):
        roofline.add_bandwidth(0)


def test_bandwidth_bars_draws_a_bar_per_impl_and_a_line_per_bound():
    import matplotlib

    matplotlib.use("Agg")
    from mlscale.viz.kernel_plots import bandwidth_bars

    ax = bandwidth_bars({"adam_step": {"reference": 9.0, "numba": 60.0},
                         "sgd_step": {"reference": 20.0, "numba": 70.0}},
                        bounds={"add": 80.0, "peak": 100.0}, title="t")
    assert len(ax.patches) == 4
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [80.0, 100.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adam_step", "sgd_step"]
    with pytest.raises(ValueError, match="gb_s is empty"):
        bandwidth_bars({})
    # a bound per op: one dashed segment over each group
    ax = bandwidth_bars({"a": {"x": 1.0}, "b": {"x": 2.0}}, bounds={"add": {"a": 3.0, "b": 4.0}})
    segs = ax.collections[0].get_segments()
    assert [tuple(s_[:, 1]) for s_ in segs] == [(3.0, 3.0), (4.0, 4.0)]
    assert [tuple(s_[:, 0]) for s_ in segs] == [(-0.45, 0.45), (0.55, 1.45)]
    with pytest.raises(ValueError, match=r"names ops \['c'\] that are not in gb_s"):
        bandwidth_bars({"a": {"x": 1.0}}, bounds={"add": {"c": 3.0}})


def _commented_stub(dst, src, scale):
    # raise NotImplementedError   <- the stub's line, left in a comment
    """A docstring that says raise NotImplementedError too."""
    for i in range(dst.size):
        dst[i] = (dst[i] + src[i]) * scale


def _live_stub(dst, src, scale):
    # TODO: a grid-stride loop
    raise NotImplementedError("write the kernel")


def _raise_bare(dst, src, scale):
    raise NotImplementedError


def test_a_stub_is_read_from_the_syntax_tree_not_the_text():
    from mlscale.check.kernels import _is_stub

    assert not _is_stub(_commented_stub)
    assert _is_stub(_live_stub) and _is_stub(_raise_bare)
