"""The CuPy paths of mlscale.ops, checked without a GPU (helpers: tests/_cuda_abi.py).

1. NVRTC (what cupy.RawModule compiles with; pip wheel nvidia-cuda-nvrtc-cu12, no GPU
   needed) compiles every kernels/*.cu for compute_75/80/90 with the wrappers' options,
   its PTX has exactly the extern "C" kernels the signature parser finds, and every
   kernel name a wrapper asks for is a PTX .entry.
2. Every public op runs its impl='cupy' path against a fake cupy: each launch is checked
   against the kernel's C signature (argument count, pointee dtypes, exact scalar types as
   CuPy marshals them), grid/block/shared memory (and the block-size needs of the
   shared-memory and warp-shuffle reductions), then emulated in NumPy, and the op's result
   is compared with its impl='reference' result.
3. The harness can fail: wrong launches, fed directly or by breaking a wrapper, raise.
"""
import functools
import re
from pathlib import Path

import numpy as np
import pytest

import mlscale.ops as ops
from mlscale.ops import _common as C
from mlscale.ops import reduce_ladder

from _cuda_abi import (CUPY_OPTIONS, EMULATORS, AbiError, FakeArray, FakeCupy, find_nvrtc,
                       macros, nvrtc_compile, parse_kernels, ptx_entries)

CU_DIR = C.kernel_dirs()[1]
CU_FILES = sorted(p.name for p in CU_DIR.glob("*.cu"))
SOURCES = {f: (CU_DIR / f).read_text() for f in CU_FILES}
KERNELS = {f: parse_kernels(s) for f, s in SOURCES.items()}
SIZES = (0, 1, 127, 128, 389)
DTYPES = (np.float32, np.float64)


# ---- block-size needs, read from the .cu -----------------------------------------------------
def _pow2(b):
    return b & (b - 1) == 0


MAX_BLOCK = macros(SOURCES["reduce.cu"])["MAX_BLOCK"]


def _tree(lo=1):
    """reduce0..reduce4: shared tree over sdata[MAX_BLOCK] halving blockDim (power of two);
    reduce4's unrolled last warp reads s[tid + 32] (blockDim >= 64)."""
    def rule(b):
        if not (_pow2(b) and lo <= b <= MAX_BLOCK):
            return f"needs a power of two in [{lo}, {MAX_BLOCK}] (shared tree, sdata[MAX_BLOCK])"
    return rule


def _exact(bs):
    return lambda b: None if b == bs else f"reduce5_{bs} is compiled for blockDim == {bs}"


def _warps(b):
    """warp_sum over a full warp (mask 0xffffffff) and warp_sums[32]: whole warps, <= 32."""
    if b % 32 or b > 1024:
        return "needs a multiple of 32 threads (full-mask warp shuffles, warp_sums[32])"


CONSTRAINTS = {"reduce0": _tree(), "reduce1": _tree(), "reduce2": _tree(), "reduce3": _tree(),
               "reduce4": _tree(64), "reduce5_128": _exact(128), "reduce5_256": _exact(256),
               "reduce5_512": _exact(512), "reduce6": _warps}
for _ks in KERNELS.values():              # every warp-shuffle reduction (sumsq_*, abs_sum_*)
    for _k, _kern in _ks.items():
        if "__shfl" in _kern.source:
            CONSTRAINTS.setdefault(_k, _warps)


def make_fake(**kw):
    return FakeCupy(sources=SOURCES, constraints=CONSTRAINTS, **kw)


@pytest.fixture
def fake(monkeypatch):
    f = make_fake()
    C.cupy_module.cache_clear()
    monkeypatch.setattr(C, "import_cupy", lambda: f.module)
    yield f
    C.cupy_module.cache_clear()


# ---- the ops, each as a function of (impl, wrap, dtype, n, rng) -> outputs -------------------
CASES = {}


def case(name, min_n=0, may_skip_launch=False, dtypes=DTYPES):
    def deco(fn):
        CASES[name] = dict(fn=fn, min_n=min_n, skip=may_skip_launch, dtypes=dtypes)
        return fn
    return deco


def _x(rng, dt, *shape):
    return rng.standard_normal(shape).astype(dt)


@case("reduce_chunk")
def _(impl, W, dt, n, rng):
    d = W(_x(rng, dt, n))
    ops.reduce_chunk(d, W(_x(rng, dt, n)), scale=0.5, impl=impl)
    return [d]


@case("weighted_sum_list")
def _(impl, W, dt, n, rng):
    return [ops.weighted_sum([W(_x(rng, dt, n)) for _ in range(3)], [0.2, -0.3, 0.5], impl=impl)]


@case("weighted_sum_stacked_out")
def _(impl, W, dt, n, rng):
    out = W(np.zeros(n, dt))
    ops.weighted_sum(W(_x(rng, dt, 4, n)), [0.1, 0.2, 0.3, 0.4], out=out, impl=impl)
    return [out]


def _sgd(momentum, nesterov):
    def run(impl, W, dt, n, rng):
        p, g, b = W(_x(rng, dt, n)), W(_x(rng, dt, n)), W(_x(rng, dt, n))
        ops.sgd_step(p, g, b if momentum else None, lr=0.1, momentum=momentum,
                     weight_decay=0.01, nesterov=nesterov, impl=impl)
        return [p, b]
    return run


case("sgd_step")(_sgd(0.0, False))
case("sgd_step_momentum")(_sgd(0.9, False))
case("sgd_step_nesterov")(_sgd(0.9, True))


def _adam(adamw):
    def run(impl, W, dt, n, rng):
        p, g, m = (W(_x(rng, dt, n)) for _ in range(3))
        v = W(np.abs(_x(rng, dt, n)))
        ops.adam_step(p, g, m, v, step=3, lr=1e-2, weight_decay=0.01, adamw=adamw, impl=impl)
        return [p, m, v]
    return run


case("adam_step")(_adam(False))
case("adamw_step")(_adam(True))


@case("norm", may_skip_launch=True)
def _(impl, W, dt, n, rng):
    return [ops.norm(W(_x(rng, dt, n)), impl=impl)]


@case("global_norm")
def _(impl, W, dt, n, rng):
    return [ops.global_norm([W(_x(rng, dt, n)), W(_x(rng, dt, 2, 3))], impl=impl)]


@case("clip_by_global_norm")
def _(impl, W, dt, n, rng):
    xs = [W(_x(rng, dt, n)), W(_x(rng, dt, 5))]
    return [ops.clip_by_global_norm(xs, max_norm=0.5, impl=impl), *xs]


def _sum(version):
    def run(impl, W, dt, n, rng):
        x = W(_x(rng, dt, n))
        if impl == "reference":
            return [float(np.sum(x, dtype=np.float64))]
        return [ops.sum_cupy(x, version)]
    return run


for _v in reduce_ladder.VERSIONS:
    case(f"sum_cupy_v{_v}", may_skip_launch=True, dtypes=(np.float32,))(_sum(_v))


@case("qsgd_quantize", may_skip_launch=True)
def _(impl, W, dt, n, rng):
    return list(ops.qsgd_quantize(W(_x(rng, dt, n)), 7, seed=1234, impl=impl))


@case("qsgd_dequantize")
def _(impl, W, dt, n, rng):
    q = W(rng.integers(-7, 8, n).astype(np.int8))
    out = W(np.zeros((n,), dt))
    return [ops.qsgd_dequantize(2.5, q, 7, dtype=dt, impl=impl),
            ops.qsgd_dequantize(2.5, q, 7, out=out, impl=impl)]


@case("sign_compress", min_n=1)
def _(impl, W, dt, n, rng):
    r = W(_x(rng, dt, n))
    return [*ops.sign_compress(W(_x(rng, dt, n)), r, impl=impl), r]


@case("sign_decompress")
def _(impl, W, dt, n, rng):
    packed = W(rng.integers(0, 256, (n + 7) // 8).astype(np.uint8))
    out = W(np.zeros((n,), dt))
    return [ops.sign_decompress(packed, 0.75, n, dtype=dt, impl=impl),
            ops.sign_decompress(packed, 0.75, (n,), out=out, impl=impl)]


def _topk(frac):
    def run(impl, W, dt, n, rng):
        r = W(_x(rng, dt, n))
        k = max(1, int(n * frac))
        return [*ops.topk_compress(W(_x(rng, dt, n)), k, r, impl=impl), r]
    return run


case("topk_compress", min_n=1)(_topk(0.15))
case("topk_compress_all", min_n=1)(_topk(1.0))


@case("topk_decompress")
def _(impl, W, dt, n, rng):
    k = n // 3
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
    vals = _x(rng, dt, k)
    out = W(_x(rng, dt, n))
    dense = ops.topk_decompress(W(idx), W(vals), n, impl=impl)
    ops.topk_decompress(W(idx.astype(np.int64)), W(vals), (n,), out=out, accumulate=True, impl=impl)
    return [dense, out]


@case("coordinate_median")
def _(impl, W, dt, n, rng):
    out = W(np.zeros((n,), dt))
    return [ops.coordinate_median(W(_x(rng, dt, 5, n)), impl=impl),
            ops.coordinate_median([W(_x(rng, dt, n)) for _ in range(4)], out=out, impl=impl)]


@case("trimmed_mean")
def _(impl, W, dt, n, rng):
    out = W(np.zeros((n,), dt))
    return [ops.trimmed_mean(W(_x(rng, dt, 6, n)), 1, impl=impl),
            ops.trimmed_mean([W(_x(rng, dt, n)) for _ in range(7)], 0.3, out=out, impl=impl)]


def _host(v):
    if isinstance(v, FakeArray):
        return v.get()
    return v


def run_case(name, kind, dt, n, fake_mod=None):
    """Outputs (as numpy/float) of case ``name``: kind 'reference' (impl='reference'),
    'host' (numpy arrays, impl='cupy') or 'device' (fake cupy arrays, impl='auto')."""
    rng = np.random.default_rng(1000 + n)
    if kind == "device":
        W, impl = fake_mod.asarray, "auto"
    else:
        W, impl = (lambda a: a), ("reference" if kind == "reference" else "cupy")
    vals = CASES[name]["fn"](impl, W, dt, n, rng)
    where = {"device": FakeArray, "host": np.ndarray}.get(kind)
    for j, v in enumerate(vals):     # results stay where the inputs were
        if where and isinstance(v, (np.ndarray, FakeArray)):
            assert isinstance(v, where), f"{name} n={n} output {j} is a {type(v).__name__}"
    return [_host(v) for v in vals]


PARAMS = [pytest.param(name, np.dtype(dt).type, kind, id=f"{name}-{np.dtype(dt).name}-{kind}")
          for name, c in CASES.items() for dt in c["dtypes"] for kind in ("host", "device")]


@pytest.mark.parametrize("name,dt,kind", PARAMS)
def test_cupy_path_launches_match_the_c_signatures(name, dt, kind, fake):
    check_case(name, dt, kind, fake)


def check_case(name, dt, kind, fake):
    """Every size: at least one launch (none only where n = 0 returns early), every launch
    passes the ABI check, and the outputs equal the op's impl='reference' outputs."""
    c = CASES[name]
    tol = dict(rtol=2e-5, atol=2e-6) if dt is np.float32 else dict(rtol=1e-12, atol=1e-13)
    for n in SIZES:
        if n < c["min_n"]:                       # refused with a clear error, before any launch
            before = len(fake.launches)
            with pytest.raises(ValueError):
                run_case(name, kind, dt, n, fake.module)
            assert len(fake.launches) == before
            continue
        before = len(fake.launches)
        got = run_case(name, kind, dt, n, fake.module)    # an AbiError at a launch fails here
        launches = fake.launches[before:]
        assert launches or (n == 0 and c["skip"]), f"{name} n={n}: no kernel was launched"
        assert not [ln for ln in launches if ln.error]
        want = run_case(name, "reference", dt, n)
        assert len(got) == len(want)
        for j, (g, w) in enumerate(zip(got, want)):
            g_, w_ = np.asarray(g), np.asarray(w)
            assert g_.shape == w_.shape and g_.dtype == w_.dtype, \
                f"{name} n={n} output {j}: {g_.shape} {g_.dtype} vs reference {w_.shape} {w_.dtype}"
            np.testing.assert_allclose(g_, w_, **tol, err_msg=f"{name} n={n} output {j}")
    assert all(opts == CUPY_OPTIONS for _, opts in fake.modules)


def _survey():
    """Run every case once per dtype, kind and n in (1, 389) against one fake cupy."""
    f = make_fake()
    with pytest.MonkeyPatch.context() as mp:
        C.cupy_module.cache_clear()
        mp.setattr(C, "import_cupy", lambda: f.module)
        try:
            for name, c in CASES.items():
                for dt in c["dtypes"]:
                    for kind in ("host", "device"):
                        for n in (1, 389):
                            run_case(name, kind, dt, n, f.module)
        finally:
            C.cupy_module.cache_clear()
    return f


@pytest.fixture(scope="module")
def survey():
    return _survey()


def launch_sites():
    """(file, line) of every C.cupy_kernel(...) call in mlscale/ops/*.py."""
    sites = set()
    for p in sorted(Path(ops.__file__).parent.glob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if "cupy_kernel(" in line and not line.lstrip().startswith("def "):
                sites.add((p.name, i))
    return sites


def test_every_kernel_file_and_launch_site_is_exercised(survey):
    assert {f for f, _ in survey.requested} == set(CU_FILES)
    assert not [(f, k) for f, k in survey.requested if k not in KERNELS[f]]
    assert {o for _, o in survey.modules} == {CUPY_OPTIONS}
    assert len(survey.launches) > 100
    sites = launch_sites()
    assert len(sites) >= 15 and survey.sites == sites, sorted(sites ^ survey.sites)


def test_every_requested_kernel_has_an_emulator_and_constraints_name_real_kernels(survey):
    for f, k in survey.requested:
        assert k.rsplit("_f", 1)[0] in EMULATORS or k in EMULATORS, k
    every = {k for ks in KERNELS.values() for k in ks}
    assert set(CONSTRAINTS) <= every
    # a kernel with a shared-memory tree or warp shuffles must state its block-size needs
    for f, ks in KERNELS.items():
        for k, kern in ks.items():
            if any(s in kern.source for s in ("__shared__", "__shfl", "__syncwarp")):
                assert k in CONSTRAINTS, f"{f}:{k} uses shared memory/warps: add a CONSTRAINTS rule"


# ---- the parser --------------------------------------------------------------------------------
def test_parser_reads_the_signatures():
    ws = KERNELS["weighted_sum.cu"]["weighted_sum_f32"].params
    assert [(p.name, p.ctype, p.depth) for p in ws] == [
        ("xs", "float", 2), ("w", "float", 1), ("out", "float", 1), ("k", "int", 0),
        ("n", "long long", 0)]
    q = KERNELS["qsgd.cu"]["qsgd_quantize_f64"].params
    assert q[1].dtype == np.int8 and q[-1].dtype == np.uint64 and q[3].dtype == np.float64
    assert KERNELS["sign_compress.cu"]["sign_pack_f32"].params[3].dtype == np.uint8
    assert "warp_sum" in KERNELS["norm.cu"]["sumsq_f32"].source       # callees are followed
    assert not any(k.dynamic_shared for ks in KERNELS.values() for k in ks.values())
    assert parse_kernels('extern "C" __global__ void f(float* a) { extern __shared__ float s[]; }'
                         )["f"].dynamic_shared


# ---- NVRTC ---------------------------------------------------------------------------------------
needs_nvrtc = pytest.mark.skipif(
    find_nvrtc() is None, reason="NVRTC not installed: pip install nvidia-cuda-nvrtc-cu12 "
    "(Linux x86_64; in mlscale's dev extra) to compile-check kernels/*.cu without a GPU")
ARCHS = ("compute_75", "compute_80", "compute_90")


@functools.lru_cache(maxsize=None)
def _compile(cu, arch, options=CUPY_OPTIONS):
    return nvrtc_compile(SOURCES[cu], cu, (*options, f"-arch={arch}"))


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu", CU_FILES)
def test_cu_compiles_with_nvrtc(cu, arch):
    rc, log, ptx = _compile(cu, arch)
    assert rc == 0, f"NVRTC rejects {cu} for {arch}:\n{log}"
    assert "warning" not in log.lower(), log
    assert ptx_entries(ptx) == set(KERNELS[cu]), "parser and compiler disagree on the kernels"


@needs_nvrtc
@pytest.mark.parametrize("arch", ("sm_75", "sm_80", "sm_90"))
@pytest.mark.parametrize("cu", CU_FILES)
def test_cubin_fits_the_launch_and_does_not_spill(cu, arch):
    """CuPy compiles straight to a cubin (-arch=sm_XX) when NVRTC knows the GPU; ptxas -v
    says per kernel: no register spills (a streaming kernel would pay them in DRAM
    traffic), registers * BLOCK within the 64K register file, static shared <= 48 KiB."""
    rc, log, _ = _compile(cu, arch, ("-std=c++14", "-Xptxas=-v"))
    assert rc == 0, log
    funcs = re.findall(r"Compiling entry function '(\w+)'", log)
    assert set(funcs) == set(KERNELS[cu]), log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) >= len(funcs) and all(a == b == "0" for a, b in spills), log
    for regs in map(int, re.findall(r"Used (\d+) registers", log)):
        assert regs * C.BLOCK <= 65536, f"{cu}: {regs} registers x {C.BLOCK} threads"
    for smem in map(int, re.findall(r"(\d+) bytes smem", log)):
        assert smem <= 48 * 1024, f"{cu}: {smem} bytes of static shared memory"


@needs_nvrtc
def test_requested_kernels_are_ptx_entries(survey):
    for f, k in sorted(survey.requested):
        for _, opts in survey.modules:
            rc, log, ptx = _compile(f, "compute_80", opts)
            assert rc == 0, log
            assert k in ptx_entries(ptx), f"{f} has no .entry {k}"


@needs_nvrtc
def test_nvrtc_harness_can_fail():
    rc, log, _ = nvrtc_compile('extern "C" __global__ void f(float* x) { x[0] = y; }', "bad.cu",
                               ("-std=c++14", "-arch=compute_80"))
    assert rc != 0 and "identifier \"y\" is undefined" in log
    # nvcc accepts host headers; NVRTC does not ship them
    rc, log, _ = nvrtc_compile('#include <vector>\nextern "C" __global__ void f() {}', "h.cu",
                               ("-std=c++14", "-arch=compute_80"))
    assert rc != 0 and "vector" in log
    # a kernel name that is not extern "C" is mangled: not an .entry under its plain name
    rc, _, ptx = nvrtc_compile("__global__ void g(float* x) { x[0] = 1; }", "m.cu",
                               ("-std=c++14", "-arch=compute_80"))
    assert rc == 0 and "g" not in ptx_entries(ptx) and ptx_entries(ptx)


# ---- the harness can fail -----------------------------------------------------------------------
def _kernel(f, cu, name):
    return f.module.RawModule(code=SOURCES[cu], options=("-std=c++14",)).get_function(name)


def test_fake_kernel_rejects_wrong_arguments():
    f = make_fake(emulate=False)
    cp, k = f.module, _kernel(f, "reduce_chunk.cu", "reduce_chunk_f32")
    a32, a64 = cp.zeros(8, np.float32), cp.zeros(8, np.float64)
    k((1,), (128,), (a32, a32, np.int64(8), np.float32(1)))               # the right launch
    bad = {"float64 array": (a32, a64, np.int64(8), np.float32(1)),
           "numpy array": (a32, np.zeros(8, np.float32), np.int64(8), np.float32(1)),
           "double": (a32, a32, np.int64(8), 1.0),
           "np.float64": (a32, a32, np.int64(8), np.float64(1)),
           "np.int32 for long long": (a32, a32, np.int32(8), np.float32(1)),
           "too few": (a32, a32, np.int64(8)),
           "strided": (a32, cp.zeros(16, np.float32)[::2], np.int64(8), np.float32(1))}
    for what, args in bad.items():
        with pytest.raises(AbiError):
            k((1,), (128,), args)
        assert f.launches[-1].error, what
    r = _kernel(f, "robust.cu", "trimmed_mean_f32")
    with pytest.raises(AbiError, match=r"k is C int .*marshalled as int64"):
        r((1,), (128,), (a32, a32, 2, np.int64(4), np.int32(0)))             # Python int for int
    with pytest.raises(AbiError, match="named 'reduce_chunk_f16'"):
        _kernel(f, "reduce_chunk.cu", "reduce_chunk_f16")


def test_fake_kernel_rejects_bad_launch_shapes():
    f = make_fake(emulate=False)
    cp = f.module
    x, out = cp.zeros(512, np.float32), cp.zeros(8, np.float32)
    args = (x, out, np.int64(512))
    for name, grid, block in [("reduce2", (0,), (128,)), ("reduce2", (1,), (2048,)),
                              ("reduce2", (1,), (96,)), ("reduce2", (1,), (1024,)),
                              ("reduce4", (1,), (32,)), ("reduce5_128", (1,), (256,)),
                              ("reduce6", (1,), (100,)), ("reduce6", 1, (128,)),
                              ("reduce6", (1,), (32, 32, 2))]:
        with pytest.raises(AbiError):
            _kernel(f, "reduce.cu", name)(grid, block, args)
    _kernel(f, "reduce.cu", "reduce6")((3,), (1024,), args)
    dyn = 'extern "C" __global__ void s(float* x) { extern __shared__ float t[]; x[0] = t[0]; }'
    k = cp.RawModule(code=dyn, options=("-std=c++14",)).get_function("s")
    with pytest.raises(AbiError, match="extern __shared__"):
        k((1,), (32,), (x,))
    k((1,), (32,), (x,), shared_mem=128)


def test_emulators_catch_out_of_bounds_and_uncovered_elements():
    f = make_fake()
    cp = f.module
    k = _kernel(f, "reduce_chunk.cu", "reduce_chunk_f32")
    with pytest.raises(AbiError, match="out of bounds"):
        k((1,), (128,), (cp.zeros(8, np.float32), cp.zeros(4, np.float32), np.int64(8),
                         np.float32(1)))
    with pytest.raises(AbiError, match="does not cover"):
        _kernel(f, "reduce.cu", "reduce2")((1,), (128,), (cp.zeros(300, np.float32),
                                                          cp.zeros(1, np.float32), np.int64(300)))
    with pytest.raises(AbiError, match="overflows"):
        _kernel(f, "robust.cu", "coordinate_median_f32")(
            (1,), (128,), (cp.zeros(65 * 2, np.float32), cp.zeros(2, np.float32), np.int32(65),
                           np.int64(2), np.int32(0)))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(cp.zeros(3))
    with pytest.raises(AttributeError, match="fake cupy has no 'cumsum'"):
        cp.cumsum


def test_broken_wrappers_are_caught(fake, monkeypatch):
    x = np.ones(389, np.float64)
    with monkeypatch.context() as m:             # launches the f32 kernel on float64 data
        m.setattr(C, "suffix", lambda dt: "f32")
        with pytest.raises(AbiError, match="needs a float32 array, got float64"):
            ops.reduce_chunk(x.copy(), x, impl="cupy")
    with monkeypatch.context() as m:             # a Python float for a float parameter
        m.setattr(C, "as_scalar", lambda dt, v: float(v))
        with pytest.raises(AbiError, match="lr is C float"):
            ops.sgd_step(x.astype(np.float32), x.astype(np.float32), None, lr=0.1, impl="cupy")
    with monkeypatch.context() as m:             # grid 0 for an empty array
        m.setattr(C, "grid_for", lambda n, *a, **k: (n + 127) // 128)
        with pytest.raises(AbiError, match="grid"):
            ops.reduce_chunk(np.zeros(0), np.zeros(0), impl="cupy")
    with monkeypatch.context() as m:             # the result is never copied back to the host
        m.setattr(C, "from_cupy", lambda dev, host: None)
        with pytest.raises(AssertionError, match="reduce_chunk n=1 output 0"):
            check_case("reduce_chunk", np.float32, "host", fake)
        check_case("reduce_chunk", np.float32, "device", fake)    # device arrays: no copy
    xf = np.ones(389, np.float32)
    with monkeypatch.context() as m:             # a block size the shared tree cannot take
        m.setattr(reduce_ladder, "BLOCK", 96)
        with pytest.raises(AbiError, match="power of two"):
            ops.sum_cupy(xf, 2)
    with monkeypatch.context() as m:             # too few blocks for reduce3's 2*B per block
        m.setattr(reduce_ladder, "_blocks", lambda v, n: max(1, n // 1024))
        with pytest.raises(AbiError, match="does not cover"):
            ops.sum_cupy(xf, 3)
    assert ops.sum_cupy(xf, 3) == pytest.approx(389)      # and the unbroken wrapper passes


# ---- regression: the ladder's grids were capped at 65535 blocks --------------------------------
# reduce0..reduce5 read one (v0-v2) or two (v3-v5) elements per thread with no grid-stride
# loop; reduce_ladder._blocks once sized their grid with C.grid_for's default cap of 65535
# blocks, so past n = 65535*128 (v0-v2) or 65535*256 (v3-v5) the tail was never read
# (mlscale bench kernels' default n = 16M hit it). This harness found it; now fixed.
@pytest.mark.parametrize("version", [0, 3])
def test_sum_cupy_covers_arrays_past_65535_blocks(fake, version):
    n = 65535 * reduce_ladder.BLOCK * (1 if version <= 2 else 2) + 1
    assert ops.sum_cupy(np.ones(n, np.float32), version) == n
    assert fake.launches[0].grid[0] > 65535
