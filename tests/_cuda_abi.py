"""Checking the CuPy paths of mlscale.ops without a GPU (helpers for test_ops_cupy_abi.py).

Three pieces:

1. ``nvrtc_compile``: NVRTC (the compiler cupy.RawModule uses) through ctypes, from the
   pip wheel ``nvidia-cuda-nvrtc-cu12``; it needs no GPU and returns the PTX.
2. ``parse_kernels``: the extern "C" __global__ signatures of a .cu source (parameter
   names, C types, pointer depth) and each kernel's source with the device functions it
   calls (to see ``extern __shared__``, shared-memory trees, warp shuffles).
3. ``FakeCupy``: a stand-in for the ``cupy`` module. Its ndarray wraps a NumPy array;
   ``RawModule(code=...).get_function(name)`` gives a kernel that, when launched, checks
   grid/block/shared_mem and every argument against the C signature the way CuPy
   marshals them (Python int -> int64, Python float -> double, NumPy scalar -> its own
   dtype, cupy array -> pointer), records the launch, and then runs the kernel's NumPy
   twin (``EMULATORS``, at the end, written by reading kernels/*.cu), so the wrapper's
   host code after the launch sees real values and the result can be compared with the
   op's reference implementation.
   Freshly allocated ``empty`` memory is filled with NaN / 0x7B bytes, so a wrapper that
   reads memory no kernel wrote shows up as a wrong result.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CUPY_OPTIONS = ("-std=c++14",)          # what mlscale.ops._common.cupy_module passes


class AbiError(AssertionError):
    """A launch CuPy would accept (or reject) but that does not match the kernel's C code."""


# ---- 1. NVRTC -----------------------------------------------------------------------------
def find_nvrtc():
    """Path of libnvrtc.so.12 from the nvidia-cuda-nvrtc-cu12 wheel, or None."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = Path(d) / "lib" / "libnvrtc.so.12"
        if p.is_file():
            return p
    return None


def nvrtc_compile(src: str, name: str, options) -> tuple[int, str, str]:
    """(return code (0 = success), compile log, PTX) of NVRTC on ``src``."""
    lib = ctypes.CDLL(str(find_nvrtc()))
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram failed ({rc})"
    try:
        opts = [o.encode() for o in options]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if rc == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value
        return rc, log.value.decode(errors="replace"), ptx.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def ptx_entries(ptx: str) -> set:
    """Names of the kernels (.entry) in a PTX text."""
    return set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))


# ---- 2. the C signatures ------------------------------------------------------------------
CTYPES = {
    "float": np.float32, "double": np.float64, "__half": np.float16, "half": np.float16,
    "char": np.int8, "signed char": np.int8, "unsigned char": np.uint8, "int8_t": np.int8,
    "uint8_t": np.uint8, "short": np.int16, "unsigned short": np.uint16, "int": np.int32,
    "signed int": np.int32, "signed": np.int32, "int32_t": np.int32, "unsigned": np.uint32,
    "unsigned int": np.uint32, "uint32_t": np.uint32, "long": np.int64, "long int": np.int64,
    "unsigned long": np.uint64, "long long": np.int64, "long long int": np.int64,
    "int64_t": np.int64, "unsigned long long": np.uint64, "unsigned long long int": np.uint64,
    "uint64_t": np.uint64, "size_t": np.uint64, "bool": np.bool_,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "restrict", "struct"}
_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "do", "else"}


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str          # base type, qualifiers removed: 'float', 'long long', ...
    depth: int          # pointer depth: 0 scalar, 1 T*, 2 T**

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype CuPy must be given: the pointee for T*, uint64 for T**."""
        if self.depth >= 2:
            return np.dtype(np.uint64)
        if self.ctype not in CTYPES:
            raise AbiError(f"parameter {self.name}: C type {self.ctype!r} is not in CTYPES")
        return np.dtype(CTYPES[self.ctype])


@dataclass
class Kernel:
    name: str
    params: list
    source: str          # its body and the bodies of the functions it calls (transitively)

    @property
    def dynamic_shared(self) -> bool:
        return bool(re.search(r"extern\s+__shared__", self.source))


def strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def parse_param(text: str) -> Param:
    toks = re.findall(r"\w+|\*", text)
    depth = toks.count("*")
    words = [t for t in toks if t != "*" and t not in _QUALIFIERS]
    if len(words) < 2:
        raise AbiError(f"cannot parse parameter {text!r} (unnamed parameters are not supported)")
    return Param(words[-1], " ".join(words[:-1]), depth)


def _bodies(src: str) -> dict:
    """name -> body text of every function defined in src (brace matching)."""
    out = {}
    for m in re.finditer(r"\b(\w+)\s*\(([^()]*)\)\s*\{", src):
        if m.group(1) in _KEYWORDS:
            continue
        depth, i = 1, m.end()
        while depth and i < len(src):
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        out.setdefault(m.group(1), "")
        out[m.group(1)] += src[m.start():i] + "\n"
    return out


def macros(src: str) -> dict:
    return {k: int(v) for k, v in re.findall(r"#define\s+(\w+)\s+(\d+)\b", src)}


def parse_kernels(src: str) -> dict:
    """name -> Kernel for every extern "C" __global__ function of a CUDA C source."""
    src = strip_comments(src)
    bodies = _bodies(src)
    out = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', src):
        name, plist = m.group(1), m.group(2).strip()
        params = [parse_param(p) for p in plist.split(",")] if plist and plist != "void" else []
        seen, todo, text = {name}, [name], ""
        while todo:                     # the kernel and every function it calls
            body = bodies.get(todo.pop(), "")
            text += body
            for callee in re.findall(r"\b(\w+)\s*(?:<[^<>;]*>)?\s*\(", body):
                if callee in bodies and callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
        out[name] = Kernel(name, params, text)
    return out


# ---- 3. the fake cupy ---------------------------------------------------------------------
_MEM: dict = {}          # fake device address (the NumPy buffer's address) -> FakeArray


def _unwrap(v):
    if isinstance(v, FakeArray):
        return v._a
    if isinstance(v, tuple):
        return tuple(_unwrap(x) for x in v)
    if isinstance(v, list):
        return [_unwrap(x) for x in v]
    return v


def _wrap(r):
    return FakeArray(r if isinstance(r, np.ndarray) else np.asarray(r))


class _Mem:
    def __init__(self, ptr):
        self.ptr = ptr


class FakeArray:
    """A 'device' array: a NumPy array that, like cupy.ndarray, refuses implicit
    conversion to NumPy (``np.asarray(x)`` raises TypeError; use ``x.get()``)."""
    __array_ufunc__ = None       # numpy scalars defer to our operators

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake cupy): "
                        "use .get()")

    dtype = property(lambda self: self._a.dtype)
    shape = property(lambda self: self._a.shape)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)

    @property
    def data(self):
        ptr = self._a.__array_interface__["data"][0]
        _MEM[ptr] = self
        return _Mem(ptr)

    def get(self):
        return self._a.copy()

    def reshape(self, *shape):
        return FakeArray(self._a.reshape(*shape))

    def ravel(self):
        return FakeArray(self._a.ravel())

    def astype(self, dtype, copy=True):
        return FakeArray(self._a.astype(dtype, copy=copy))

    def copy(self):
        return FakeArray(self._a.copy())

    def fill(self, v):
        self._a.fill(_unwrap(v))

    def sum(self, *a, **k):
        return _wrap(self._a.sum(*a, **k))

    def min(self, *a, **k):
        return _wrap(self._a.min(*a, **k))

    def max(self, *a, **k):
        return _wrap(self._a.max(*a, **k))

    def __getitem__(self, key):
        r = self._a[_unwrap(key)]
        return FakeArray(r) if isinstance(r, np.ndarray) else _wrap(r)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            raise TypeError("fake cupy: assigning a numpy array into a device array; "
                            "use cupy.asarray first")
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __repr__(self):
        return f"FakeArray({self._a!r})"

    def _op(name):                                      # noqa: N805
        def f(self, other):
            if isinstance(other, np.ndarray):
                raise TypeError(f"fake cupy: {name} between a device array and a numpy array")
            r = getattr(self._a, name)(_unwrap(other))
            if r is NotImplemented:
                return r
            return self if name.startswith("__i") else _wrap(r)
        return f

    for _n in ("add", "sub", "mul", "truediv", "floordiv", "pow", "lt", "le", "gt", "ge",
               "eq", "ne", "and", "or"):
        locals()[f"__{_n}__"] = _op(f"__{_n}__")
        if _n not in ("lt", "le", "gt", "ge", "eq", "ne"):
            locals()[f"__r{_n}__"] = _op(f"__r{_n}__")
            locals()[f"__i{_n}__"] = _op(f"__i{_n}__")
    del _n, _op
    __hash__ = None

    def __neg__(self):
        return FakeArray(-self._a)

    def __abs__(self):
        return FakeArray(abs(self._a))


FakeArray.__module__ = "cupy._fake"     # mlscale.ops._common.array_kind -> 'cupy'


def _fill_garbage(a):
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    else:
        a.view(np.uint8).fill(0x7B)
    return a


@dataclass
class Launch:
    file: str
    name: str
    grid: tuple
    block: tuple
    shared_mem: int
    arg_types: tuple
    error: str = ""


@dataclass
class FakeCupy:
    """A fake ``cupy`` module (``.module``) that records launches in ``.launches``.

    ``sources``: file name -> CUDA C text, to say which file a RawModule's code is.
    ``constraints``: kernel name -> function(block_x) returning an error message or None
    (the shared-memory and warp requirements read from the .cu). ``emulate``: run the
    NumPy twin of each kernel after a launch passes the check.
    """
    sources: dict
    constraints: dict = field(default_factory=dict)
    emulate: bool = True
    launches: list = field(default_factory=list)
    requested: set = field(default_factory=set)     # (file, kernel name) from get_function
    sites: set = field(default_factory=set)         # (wrapper file, line) that asked for a kernel
    modules: list = field(default_factory=list)     # (file, options) of each RawModule

    def __post_init__(self):
        _MEM.clear()
        self.module = self._make_module()

    def _make_module(self):
        m = types.ModuleType("cupy", "fake cupy for ABI checks (tests/_cuda_abi.py)")
        for t in ("float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64",
                  "uint32", "uint64", "bool_", "intp"):
            setattr(m, t, getattr(np, t))
        m.ndarray = FakeArray
        fake = self

        def asarray(obj, dtype=None):
            if isinstance(obj, FakeArray):
                return obj if dtype is None or np.dtype(dtype) == obj.dtype else obj.astype(dtype)
            return FakeArray(np.array(obj, dtype=dtype, order="C"))

        def empty(shape, dtype=np.float64, order="C"):
            return FakeArray(_fill_garbage(np.empty(shape, dtype, order)))

        m.asarray = asarray
        m.array = asarray
        m.asnumpy = lambda x: x.get() if isinstance(x, FakeArray) else np.asarray(x)
        m.empty = empty
        m.empty_like = lambda a, dtype=None: empty(a.shape, dtype or a.dtype)
        m.zeros = lambda shape, dtype=np.float64: FakeArray(np.zeros(shape, dtype))
        m.zeros_like = lambda a, dtype=None: FakeArray(np.zeros(a.shape, dtype or a.dtype))
        m.ascontiguousarray = lambda a: FakeArray(np.ascontiguousarray(_dev(a, "contiguous")))
        m.stack = lambda xs, axis=0: FakeArray(np.stack([_dev(x, "stack") for x in xs], axis))
        m.concatenate = lambda xs, axis=0: FakeArray(
            np.concatenate([_dev(x, "concatenate") for x in xs], axis))
        m.partition = lambda a, kth: FakeArray(np.partition(_dev(a, "partition"), kth))
        m.flatnonzero = lambda a: FakeArray(np.flatnonzero(_dev(a, "flatnonzero")))
        m.sort = lambda a: FakeArray(np.sort(_dev(a, "sort")))

        class RawModule:
            def __init__(self, code=None, options=(), **kwargs):
                if not isinstance(code, str):
                    raise AbiError("RawModule: code must be the CUDA C source text")
                if not isinstance(options, tuple):
                    raise AbiError(f"RawModule: options must be a tuple (cupy hashes it), "
                                   f"got {type(options).__name__}")
                self.file = next((f for f, s in fake.sources.items() if s == code), "<code>")
                self.kernels = parse_kernels(code)
                fake.modules.append((self.file, options))

            def get_function(self, name):
                fake.requested.add((self.file, name))
                fake.sites.add(_caller())
                if name not in self.kernels:
                    raise AbiError(f"{self.file}: no extern \"C\" __global__ kernel named "
                                   f"{name!r} (have: {', '.join(sorted(self.kernels))}); "
                                   "cupy raises CUDADriverError 'named symbol not found'")
                return FakeKernel(fake, self.file, self.kernels[name])

        m.RawModule = RawModule

        def missing(name):
            raise AttributeError(f"fake cupy has no {name!r}: the wrappers use a cupy function "
                                 "tests/_cuda_abi.py does not provide; add it there")
        m.__getattr__ = missing
        return m


def _caller():
    """(file name, line) of the first frame outside this file and mlscale.ops._common."""
    f = sys._getframe(1)
    while f and os.path.basename(f.f_code.co_filename) in ("_cuda_abi.py", "_common.py"):
        f = f.f_back
    return (os.path.basename(f.f_code.co_filename), f.f_lineno) if f else ("?", 0)


def _dev(a, fn):
    if not isinstance(a, FakeArray):
        raise TypeError(f"fake cupy: cupy.{fn} got a {type(a).__name__}, not a cupy array")
    return a._a


def _pos_ints(v, what, limits):
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3:
        raise AbiError(f"{what} must be a tuple of 1 to 3 ints, got {v!r}")
    for x, lim in zip(v, limits):
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 1 <= x <= lim:
            raise AbiError(f"{what}={v!r}: each entry must be an int in [1, {lim}]")


def check_arg(p: Param, a) -> str:
    """An error message if CuPy would not pass ``a`` as the C parameter ``p``, else ''."""
    if p.depth:
        if not isinstance(a, FakeArray):
            return (f"{p.name} ({p.ctype}{'*' * p.depth}) needs a cupy array, got "
                    f"{type(a).__name__}")
        ok = {np.dtype(np.uint64), np.dtype(np.int64)} if p.depth >= 2 else {p.dtype}
        if a.dtype not in ok:
            return (f"{p.name} ({p.ctype}{'*' * p.depth}) needs a {'/'.join(map(str, ok))} "
                    f"array, got {a.dtype}")
        if not a.flags.c_contiguous:
            return f"{p.name}: a strided cupy array; the kernel walks flat memory"
        return ""
    if isinstance(a, FakeArray) or isinstance(a, np.ndarray):
        return f"{p.name} ({p.ctype}) is a scalar, got an array"
    if isinstance(a, bool):
        got = np.dtype(np.bool_)
    elif isinstance(a, int):
        got = np.dtype(np.int64)                  # CuPy: Python int -> long long
    elif isinstance(a, float):
        got = np.dtype(np.float64)                # CuPy: Python float -> double
    elif isinstance(a, np.generic):
        got = a.dtype
    else:
        return f"{p.name} ({p.ctype}): unsupported argument type {type(a).__name__}"
    if got != p.dtype:
        return (f"{p.name} is C {p.ctype} ({p.dtype}) but gets {type(a).__name__} "
                f"(marshalled as {got}): the kernel reads garbage")
    return ""


class FakeKernel:
    def __init__(self, fake, file, kernel):
        self.fake, self.file, self.kernel = fake, file, kernel

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        k = self.kernel
        rec = Launch(self.file, k.name, grid, block, shared_mem,
                     tuple(type(a).__name__ if not hasattr(a, "dtype") else str(a.dtype)
                           for a in (args if isinstance(args, tuple) else ())))
        self.fake.launches.append(rec)
        try:
            self._check(grid, block, args, shared_mem)
        except AbiError as e:
            rec.error = str(e)
            raise
        if self.fake.emulate:
            run = EMULATORS.get(re.sub(r"_f(32|64)$", "", k.name))
            if run is None:
                raise AbiError(f"no NumPy emulator for kernel {k.name}; add one to EMULATORS")
            env = {p.name: (a._a.reshape(-1) if p.depth else a) for p, a in zip(k.params, args)}
            run(env, int(np.prod(grid)), int(block[0]), self.fake.sources.get(self.file, ""))

    def _check(self, grid, block, args, shared_mem):
        k = self.kernel
        where = f"{self.file}:{k.name}"
        _pos_ints(grid, f"{where}: grid", (2**31 - 1, 65535, 65535))
        _pos_ints(block, f"{where}: block", (1024, 1024, 64))
        if int(np.prod(block)) > 1024:
            raise AbiError(f"{where}: block={block!r} has more than 1024 threads")
        rule = self.fake.constraints.get(k.name)
        msg = rule(int(block[0])) if rule else None
        if msg:
            raise AbiError(f"{where}: block={block!r}: {msg}")
        if not isinstance(shared_mem, (int, np.integer)) or not 0 <= shared_mem <= 48 * 1024:
            raise AbiError(f"{where}: shared_mem={shared_mem!r} must be an int in [0, 49152]")
        if k.dynamic_shared and shared_mem == 0:
            raise AbiError(f"{where} declares extern __shared__ memory but the launch passes "
                           "no shared_mem=")
        if not isinstance(args, tuple):
            raise AbiError(f"{where}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(k.params):
            raise AbiError(f"{where} takes {len(k.params)} arguments "
                           f"({', '.join(p.name for p in k.params)}), got {len(args)}")
        errs = [e for p, a in zip(k.params, args) if (e := check_arg(p, a))]
        if errs:
            raise AbiError(f"{where}: " + "; ".join(errs))


# ---- NumPy twins of the kernels (read from kernels/*.cu), so values after a launch are real
def _need(env, name, n):
    a = env[name]
    if a.size < n:
        raise AbiError(f"out of bounds: the kernel touches {n} elements of {name} but the "
                       f"array has {a.size}")
    return a[:n]


def _block_partials(vals, grid, block):
    """Per-block sums of a grid-stride loop: element i goes to block (i % stride) // block."""
    i = np.arange(vals.size)
    return np.bincount((i % (grid * block)) // block, weights=vals, minlength=grid)[:grid]


def _reduce_tiles(span):
    """reduce0..reduce5: no grid-stride loop; block b sums x[b*span*B : (b+1)*span*B]."""
    def run(e, grid, block, src):
        n, tile = int(e["n"]), span * block
        out = _need(e, "out", grid)
        if grid * tile < n:
            raise AbiError(f"grid {grid} x {tile} elements per block does not cover n={n}: "
                           f"{n - grid * tile} elements are never read")
        out[:grid] = 0
        if n:
            out[:(n + tile - 1) // tile] = np.add.reduceat(_need(e, "x", n), np.arange(0, n, tile),
                                                          dtype=np.float64)
    return run


def _stride_sum(f):
    def run(e, grid, block, src):
        n = int(e["n"])
        out = e["partials"] if "partials" in e else e["out"]
        _need(e, "partials" if "partials" in e else "out", grid)
        out[:grid] = _block_partials(f(e, n).astype(np.float64), grid, block).astype(out.dtype)
    return run


def _adam(e, grid, block, src):
    n = int(e["n"])
    p, g, m, v = (_need(e, k, n) for k in "pgmv")
    pi = p * e["decay"]
    gi = g + e["l2"] * pi
    mi = e["beta1"] * m + e["c1"] * gi
    vi = e["beta2"] * v + e["c2"] * gi * gi
    m[:], v[:] = mi, vi
    p[:] = pi - e["step_size"] * mi / (np.sqrt(vi) / e["bc2_sqrt"] + e["eps"])


def _sgd(e, grid, block, src):
    n = int(e["n"])
    p, g = _need(e, "p", n), _need(e, "g", n)
    gi = g + e["wd"] * p
    if e["use_momentum"]:
        buf = _need(e, "buf", n)
        b = e["momentum"] * buf + gi
        buf[:] = b
        gi = gi + e["momentum"] * b if e["nesterov"] else b
    p[:] = p - e["lr"] * gi


def _quantize(e, grid, block, src):
    from mlscale.ops import _rng
    n = int(e["n"])
    x, q = _need(e, "x", n), _need(e, "q", n)
    s = e["s"]
    r = np.abs(x) / e["nrm"] * s
    lo = np.floor(r)
    lo = lo + (_rng.uniform_reference(int(e["seed"]), n) < (r - lo).astype(np.float64))
    lvl = np.minimum(lo, s)
    q[:] = np.where(x < 0, -lvl, lvl).astype(np.int8)


def _sign_pack(e, grid, block, src):
    n = int(e["n"])
    x, r = _need(e, "x", n), _need(e, "r", n)
    packed = _need(e, "packed", (n + 7) // 8)
    c = x + r
    bits = c >= 0
    r[:] = np.where(bits, c - e["scale"], c + e["scale"])
    packed[:] = np.packbits(bits)


def _sign_unpack(e, grid, block, src):
    n = int(e["n"])
    out = _need(e, "out", n)
    bits = np.unpackbits(_need(e, "packed", (n + 7) // 8))[:n]
    out[:] = np.where(bits == 1, e["scale"], -e["scale"])


def _indices(e, k, size):
    idx = _need(e, "idx", k).astype(np.int64)
    if k and (idx.min() < 0 or idx.max() >= size):
        raise AbiError(f"out of bounds: idx spans [{idx.min()}, {idx.max()}], array of {size}")
    return idx


def _gather_zero(e, grid, block, src):
    k = int(e["k"])
    r, values = e["r"], _need(e, "values", k)
    idx = _indices(e, k, r.size)
    values[:] = r[idx]
    r[idx] = 0


def _scatter(e, grid, block, src):
    k = int(e["k"])
    out = e["out"]
    idx = _indices(e, k, out.size)
    if e["accumulate"]:
        np.add.at(out, idx, _need(e, "values", k))
    else:
        out[idx] = _need(e, "values", k)


def _robust(median):
    def run(e, grid, block, src):
        k, n, b = int(e["k"]), int(e["n"]), int(e["b"])
        max_k = macros(src).get("MAX_K", 64)
        if not 1 <= k <= max_k:
            raise AbiError(f"k={k} clients overflows the per-thread buffer double buf[{max_k}]")
        out = _need(e, "out", n)
        xs = np.sort(_need(e, "xs", k * n).reshape(k, n).astype(np.float64), axis=0)
        if median:
            h = k // 2
            out[:] = xs[h] if k % 2 else (xs[h - 1] + xs[h]) * 0.5
        else:
            if k - 2 * b <= 0:
                raise AbiError(f"trimmed mean divides by k - 2b = {k - 2 * b}")
            out[:] = xs[b:k - b].sum(axis=0) / (k - 2 * b)
    return run


def _weighted_sum(e, grid, block, src):
    k, n = int(e["k"]), int(e["n"])
    out, w = _need(e, "out", n), _need(e, "w", k)
    acc = None
    for j, ptr in enumerate(_need(e, "xs", k)):
        row = _MEM.get(int(ptr))
        if row is None:
            raise AbiError(f"xs[{j}] = {int(ptr):#x} is not the address of a live cupy array")
        if row.dtype != out.dtype:
            raise AbiError(f"xs[{j}] points at {row.dtype} data, the kernel reads {out.dtype}")
        x = row._a.reshape(-1)[:n]
        if x.size < n:
            raise AbiError(f"out of bounds: xs[{j}] has {x.size} elements, n={n}")
        acc = w[j] * x if acc is None else acc + w[j] * x
    out[:] = acc


def _rc(e, grid, block, src):
    n = int(e["n"])
    d = _need(e, "dst", n)
    d[:] = (d + _need(e, "src", n)) * e["scale"]


def _prepare(e, grid, block, src):
    n = int(e["n"])
    x, r, absc = _need(e, "x", n), _need(e, "r", n), _need(e, "absc", n)
    r[:] = x + r
    absc[:] = np.abs(r)


def _dequantize(e, grid, block, src):
    n = int(e["n"])
    out = _need(e, "out", n)
    out[:] = _need(e, "q", n).astype(out.dtype) * e["scale"]


EMULATORS = {    # kernel name without its _f32/_f64 suffix -> NumPy twin
    "reduce_chunk": _rc, "weighted_sum": _weighted_sum, "sgd_step": _sgd, "adam_step": _adam,
    "sumsq": _stride_sum(lambda e, n: _need(e, "x", n).astype(np.float64) ** 2),
    "abs_sum": _stride_sum(lambda e, n: np.abs(_need(e, "x", n) + _need(e, "r", n))),
    "qsgd_quantize": _quantize, "qsgd_dequantize": _dequantize,
    "sign_pack": _sign_pack, "sign_unpack": _sign_unpack,
    "topk_prepare": _prepare, "topk_gather_zero": _gather_zero, "topk_scatter": _scatter,
    "coordinate_median": _robust(True), "trimmed_mean": _robust(False),
    "reduce0": _reduce_tiles(1), "reduce1": _reduce_tiles(1), "reduce2": _reduce_tiles(1),
    "reduce3": _reduce_tiles(2), "reduce4": _reduce_tiles(2), "reduce5_128": _reduce_tiles(2),
    "reduce5_256": _reduce_tiles(2), "reduce5_512": _reduce_tiles(2),
    "reduce6": _stride_sum(lambda e, n: _need(e, "x", n)),
}
