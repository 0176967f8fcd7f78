"""The torch engine on GPUs: ``TorchComm(device="gpu")``, NCCL payloads beside a gloo
control group (mlscale/comm/torch_nccl.py). Three layers, so that what can run here does:

1. the clear errors where device="gpu" cannot run (no CUDA, no NCCL, no CuPy, more ranks
   than GPUs), in this process, with torch's answers monkeypatched where this machine
   cannot give them;
2. ``TorchComm(two_groups=True)``: the same two-group code on CPU, a second gloo group as
   the payload group and NumPy arrays through DLPack, in real processes (marked ``mpi``):
   the collectives body of every engine, the same results as the gloo-only engine, the
   bytes each group carries (recorded at the groups), point to point in NCCL's order,
   splits, argument checks;
3. the real NCCL path (marked ``gpu``: skipped without a CUDA GPU, cupy and a CUDA torch;
   ``tools/gpu_check_torch_nccl.sh`` runs it)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import ALGORITHMS

torch = pytest.importorskip("torch", reason='the torch engine needs PyTorch: pip install "mlscale[torch]"')

from _mpi_batch import Batches, require_mpi  # noqa: E402
from test_collectives import run_collective_checks  # noqa: E402
from test_mpi import (_mismatch, _out_mismatch, _ring_bytes, check_mismatch, check_out_mismatch,  # noqa: E402
                      check_ring_bytes)

from mlscale.comm import torch_nccl  # noqa: E402
from mlscale.comm.torch_nccl import _NATIVE  # noqa: E402

#: per collective: one mlscale algorithm over the two-group send/recv, the payload group's own, the default
ALGOS = {k: ([("ring" if "ring" in v else sorted(v)[0])] + (["native"] if k in _NATIVE else []) + [None])
         for k, v in ALGORITHMS.items()}


# ---------------------------------------------------------------- 1. clear errors (this process)
@pytest.fixture
def cuda_here(monkeypatch):
    """torch answers as on a Linux CUDA build with ``n`` GPUs; cupy importable (a stand-in)."""
    import types

    import torch.distributed as dist

    def setup(n=2, nccl=True, cupy=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)
        monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy") if cupy else None)
    return setup


def test_no_cuda_says_which_torch_and_how_to_get_a_cuda_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import torch.distributed as dist

    with pytest.raises(ms.BackendUnavailable) as e:
        torch_nccl.gpu_requirements(torch, dist)
    msg = str(e.value)
    assert "torch.cuda.is_available() is False" in msg and torch.__version__ in msg
    assert "download.pytorch.org/whl/cu" in msg and "device='cpu'" in msg and "nvidia-smi" in msg
    if torch.version.cuda is None:
        assert "a CPU-only build" in msg


def test_no_nccl_in_the_build_says_so(cuda_here):
    import torch.distributed as dist

    cuda_here(nccl=False)
    with pytest.raises(ms.BackendUnavailable, match=r"built without it.*is_nccl_available\(\) is False") as e:
        torch_nccl.gpu_requirements(torch, dist)
    assert "device='cpu'" in str(e.value) and "Linux CUDA build" in str(e.value)


def test_no_cupy_names_the_wheel(cuda_here, monkeypatch):
    import torch.distributed as dist

    cuda_here(cupy=False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with pytest.raises(ms.BackendUnavailable, match=r"pip install cupy-cuda12x") as e:
        torch_nccl.gpu_requirements(torch, dist)
    assert "CuPy arrays in and out" in str(e.value)


def test_everything_there_gives_cupy(cuda_here):
    import torch.distributed as dist

    cuda_here()
    assert torch_nccl.gpu_requirements(torch, dist) is sys.modules["cupy"]


def test_more_ranks_than_gpus(cuda_here, monkeypatch):
    cuda_here(n=2)
    with pytest.raises(ms.BackendUnavailable, match=r"world_size=3 but this machine has 2 GPU\(s\)"):
        torch_nccl.check_gpu_world(torch, 3)
    torch_nccl.check_gpu_world(torch, 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ms.BackendUnavailable, match=r"rank 5 is local rank 2 .* 2 GPU\(s\).*--nproc-per-node 2"):
        torch_nccl.local_gpu(torch, 5)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torch_nccl.local_gpu(torch, 5) == 1
    # ms.launch refuses before any process starts
    with pytest.raises(ms.BackendUnavailable, match="world_size=4 but this machine has 2 GPU"):
        ms.launch(lambda comm: 0, 4, backend="torch", device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the no-CUDA message cannot be shown")
def test_launch_on_gpu_without_cuda_is_refused_before_starting():
    with pytest.raises(ms.BackendUnavailable, match="torch.cuda.is_available"):
        ms.launch(lambda comm: 0, 2, backend="torch", device="gpu")
    with pytest.raises(ms.BackendUnavailable, match="torch.cuda.is_available"):
        ms.comm.TorchComm(device="gpu")  # before touching torch.distributed


def test_bad_device_and_group_arguments():
    with pytest.raises(ms.CommError, match=r"device='tpu'.*use device='cpu'.*device='gpu'"):
        ms.comm.TorchComm(device="tpu")
    with pytest.raises(ms.CommError, match="pass no group="):
        ms.comm.TorchComm(group=object(), two_groups=True)
    with pytest.raises(ms.CommError, match="unknown device 'tpu'"):
        ms.launch(lambda comm: 0, 2, backend="torch", device="tpu")


def test_import_does_not_import_cupy_or_torch():
    code = "import sys, mlscale.comm.torch_nccl; print('cupy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[0] == "False", out.stdout + out.stderr


# ---------------------------------------------------------------- 2. the two-group path on CPU
_TWO = {}


def two(comm):
    """This rank's two-group communicator (made once per process, by every rank together)."""
    if "comm" not in _TWO:
        _TWO["comm"] = ms.comm.TorchComm(check=comm.check, two_groups=True)
    return _TWO["comm"]


def _nbytes(args):
    n = 0
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(t, torch.Tensor):
                n += t.numel() * t.element_size()
    return n


class Recorder:
    """A process group that logs every call (name, bytes of the tensors passed)."""

    def __init__(self, pg):
        self.pg, self.log = pg, []

    def __getattr__(self, name):
        f = getattr(self.pg, name)
        if not callable(f) or name.startswith("_get"):
            return f

        def call(*args, **kwargs):
            self.log.append((name, _nbytes(args)))
            return f(*args, **kwargs)

        return call


def _bytes_per_group(comm):
    """What goes over which group: headers (96 B of int64) and argument checks over the
    control group, every payload byte over the payload group, nothing else."""
    c = two(comm)
    p, r = c.world_size, c.rank
    right, left = (r + 1) % p, (r - 1) % p
    hdr = torch_nccl._HDR * 8
    ctl, data = Recorder(c._pg), Recorder(c._data)
    c._pg, c._data = ctl, data
    out = {}
    try:
        x = np.arange(1000, dtype=np.float64) + r
        y = c.sendrecv(x, right, left)
        assert np.array_equal(y, np.arange(1000.0) + left)
        assert sorted(ctl.log) == [("recv", hdr), ("send", hdr)], ctl.log
        assert sorted(data.log) == [("recv", 8000), ("send", 8000)], data.log
        ctl.log.clear(), data.log.clear()
        c.check = False  # no argument check: the control group is not used at all
        c.all_reduce(x)
        assert ctl.log == [] and data.log == [("allreduce", 8000)], (ctl.log, data.log)
        c.check = True
        ctl.log.clear(), data.log.clear()
        c.all_reduce(x)
        assert {n for n, _ in ctl.log} == {"allgather"} and data.log == [("allreduce", 8000)]
        out["check_bytes"] = sum(b for _, b in ctl.log)
        data.log.clear()
        c.broadcast(x, root=0)
        assert data.log == [("broadcast", 8000)], data.log
        data.log.clear()
        c.reduce_scatter(x)  # reduce_scatter_tensor: the input, and this rank's piece (padded when uneven)
        width = -(-1000 // p)
        assert data.log == [("_reduce_scatter_base", 8 * (p + 1) * width if 1000 % p else 8000 + 8000 // p)]
        data.log.clear()
        c.all_gather(np.arange(10.0 + r))  # all_gather_into_tensor, every piece padded to the widest (10 + p - 1)
        assert data.log == [("_allgather_base", 8 * (10 + p - 1) * (p + 1))], data.log
        # mlscale's ring over the two groups: one header per message on control, the
        # message's bytes on payload, and the payload bytes are the ones counted in nbytes_sent
        ctl.log.clear(), data.log.clear()
        c.check = False
        b0, m0 = c.nbytes_sent, c.messages_sent
        c.all_reduce(np.ones(1200, np.float32), algorithm="ring")
        sent, msgs = c.nbytes_sent - b0, c.messages_sent - m0
        assert [n for n, _ in ctl.log].count("send") == msgs == 2 * (p - 1)
        assert all(b == hdr for _, b in ctl.log)
        assert sum(b for n, b in data.log if n == "send") == sent == 2 * (p - 1) * 4800 // p
        out["ring"] = (sent, msgs)
    finally:
        c._pg, c._data, c.check = ctl.pg, data.pg, True
    return out


def _p2p(comm):
    """Point to point on the two groups: dtypes, shapes, out=, blocking rings, irecv
    before a blocking send, the same tag in order, recv_any; a receive out of NCCL's
    order raises and can be repeated."""
    c = two(comm)
    p, r = c.world_size, c.rank
    right, left = (r + 1) % p, (r - 1) % p
    checks = 0
    for n in (0, 1, 7, 100_003):
        for dtype in (np.float32, np.float64, np.int32, np.int8, np.complex64, np.bool_):
            x = (np.arange(n) + r).astype(dtype)
            y = c.sendrecv(x, right, left, tag=n % 7)
            want = (np.arange(n) + left).astype(dtype)
            assert y.dtype == want.dtype and y.shape == want.shape and np.array_equal(y, want), (n, dtype)
            out = np.empty(n, dtype)
            assert c.sendrecv(x, right, left, out=out) is out and np.array_equal(out, want)
            checks += 2
    for shape in [(3, 4), (2, 3, 4, 5, 6, 1), ()]:
        y = c.sendrecv(np.full(shape, r, np.float64), right, left)
        assert y.shape == shape and np.all(y == left)
    out = np.zeros((600, 60))[:, ::2]  # a non-contiguous out= is filled too
    c.sendrecv(np.full((600, 30), r, np.float64), right, left, out=out)
    assert np.all(out == left)
    big = np.arange(300_000, dtype=np.float32) * (r + 1)
    if r % 2 == 0:  # blocking send/recv round the ring
        c.send(big, right, tag=1)
        got = c.recv(left, tag=1)
    else:
        got = c.recv(left, tag=1)
        c.send(big, right, tag=1)
    assert np.array_equal(got, np.arange(300_000, dtype=np.float32) * (left + 1))
    req = c.irecv(left, tag=2)  # irecv, then a BLOCKING send, then wait: one batch, no deadlock
    c.send(big, right, tag=2)
    assert np.array_equal(req.wait(), np.arange(300_000, dtype=np.float32) * (left + 1))
    x = np.arange(10.0)
    s = c.isend(x, right, tag=3)
    x[:] = -1  # isend took a snapshot
    assert np.array_equal(c.recv(left, tag=3), np.arange(10.0))
    s.wait()
    reqs = [c.irecv(left, tag=8) for _ in range(3)]  # same tag: in the order sent
    for k in range(3):
        c.isend(np.full(1000 * (k + 1), float(k)), right, tag=8)
    for k, q in enumerate(reqs):
        a = q.wait()
        assert a.size == 1000 * (k + 1) and np.all(a == k)
    # tags out of the order sent: NCCL would pair the wrong payloads, so it is refused
    # with the reason (and moves nothing), and both messages arrive when received in order
    if r == 0 and p > 1:
        for q in [c.isend(np.array([5.0]), 1, tag=5), c.isend(np.full(3, 6.0), 1, tag=6)]:
            q.wait()
    elif r == 1:
        with pytest.raises(ms.CommError, match=r"order they were sent.*receive them in that order"):
            c.recv(0, tag=6)
        assert c.recv(0, tag=5).tolist() == [5.0]
        assert c.recv(0, tag=6).tolist() == [6.0] * 3
    c.barrier()
    if r == 0:  # recv_any: everyone reports to rank 0
        seen = sorted(c.recv_any(tag=9)[0] for _ in range(p - 1))
        assert seen == list(range(1, p))
    else:
        c.send(np.full(40_000, r), 0, tag=9)
    # a queued irecv and isend are completed before a collective (NCCL runs in order)
    rq, sq = c.irecv(left, tag=4), c.isend(np.full(5, r), right, tag=4)
    assert c.all_reduce(np.array([1]))[0] == p
    assert np.all(rq.wait() == left) and sq.wait() is None and rq.test()
    c.barrier()
    return checks


def _same_as_gloo(comm):
    """The same calls on the gloo-only engine and on the two-group one: the same results
    (bitwise for gloo's own and mlscale's algorithms, 1e-12 where the two differ: gloo-only
    runs mlscale's reduce_scatter and all_to_all, two groups the payload group's own)."""
    c = two(comm)
    p, r = c.world_size, c.rank
    rng = np.random.default_rng(r)
    x = rng.standard_normal(1001)
    xi = rng.integers(-100, 100, 37).astype(np.int32)
    cases = [
        ("all_reduce", lambda k: k.all_reduce(x), True),
        ("all_reduce max", lambda k: k.all_reduce(xi, op="max"), True),
        ("all_reduce mean", lambda k: k.all_reduce(x, op="mean"), True),
        ("all_reduce ring", lambda k: k.all_reduce(x, algorithm="ring"), True),
        ("all_reduce int16", lambda k: k.all_reduce(xi.astype(np.int16)), True),  # not reducible: mlscale's
        ("reduce_scatter", lambda k: k.reduce_scatter(x), False),
        ("reduce_scatter prod", lambda k: k.reduce_scatter(xi % 3 + 1, op="prod"), True),
        ("all_gather uneven", lambda k: k.all_gather(np.arange(r + 2.0).reshape(-1, 1) * (r + 1)), True),
        ("broadcast", lambda k: k.broadcast(x, root=p - 1), True),
        ("reduce", lambda k: k.reduce(x, root=0), True),
        ("all_to_all uneven", lambda k: k.all_to_all_v(np.arange(3 * p * 2.0).reshape(-1, 2) + r,
                                                        [3 * p - (p - 1)] + [1] * (p - 1))[0], True),
        ("all_to_all list", lambda k: k.all_to_all([np.full((j + r, 3), 10 * r + j) for j in range(p)]), True),
        ("gather", lambda k: k.gather(np.arange(r + 1), root=0), True),
        ("sendrecv", lambda k: k.sendrecv(x, (r + 1) % p, (r - 1) % p), True),
    ]
    n = 0
    for what, call, exact in cases:
        a, b = call(comm), call(c)
        a, b = (list(a), list(b)) if isinstance(a, list) else ([a], [b])
        for u, v in zip(a, b):
            if u is None:
                assert v is None, what
                n += 1
                continue
            assert u.shape == v.shape and u.dtype == v.dtype, (what, u.shape, v.shape, u.dtype, v.dtype)
            if exact:
                assert np.array_equal(u, v), what
            else:
                np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, err_msg=what)
            n += 1
    return n


def _misc(comm):
    c = two(comm)
    p, r = c.world_size, c.rank
    assert c.backend == "torch" and c.xp is np and c.device is None
    from mlscale.comm.torch_dist import TorchComm

    assert isinstance(c, TorchComm) and c.process_group is not c.control_group
    sub = c.split(r % 2, key=-r)  # reversed order inside each half
    members = [q for q in range(p) if q % 2 == r % 2]
    assert type(sub) is type(c) and sub.world_size == len(members)
    assert sub.rank == sorted(members, reverse=True).index(r)
    assert sub.all_reduce(np.array([r]), algorithm="ring")[0] == sum(members)
    assert sub.all_reduce(np.array([r]))[0] == sum(members)  # the payload group's own, on the new groups
    assert sub.all_gather(np.array([r])).tolist() == sorted(members, reverse=True)
    subsub = sub.split(0)  # a split of a split: only its members take part
    assert subsub.world_size == sub.world_size and subsub.all_reduce(np.array([1]))[0] == sub.world_size
    rest = c.split(None if r == 0 else 1)
    assert (rest is None) == (r == 0) and (rest is None or rest.world_size == p - 1)
    if rest is not None:
        assert rest.sendrecv(np.array([r]), (rest.rank + 1) % rest.world_size,
                             (rest.rank - 1) % rest.world_size).size == 1
    c.barrier()
    return True


SECTIONS = {
    "collectives": lambda comm: run_collective_checks(two(comm), ALGOS),
    "same": _same_as_gloo,
    "bytes": _bytes_per_group,
    "p2p": _p2p,
    "out_mismatch": lambda comm: _out_mismatch(two(comm)),
    "mismatch": lambda comm: _mismatch(two(comm)),
    "ring_bytes": lambda comm: _ring_bytes(two(comm)),
    "misc": _misc,
}
BATCHES = Batches(SECTIONS, timeout=180, backend="torch")


def section(p, name):
    require_mpi()
    return BATCHES.section(p, name)


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 3])
def test_collectives_body_on_two_groups(p):
    counts = section(p, "collectives")
    assert len(set(counts)) == 1 and counts[0] > 500


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 3])
def test_same_results_as_the_gloo_only_engine(p):
    assert all(n >= 14 for n in section(p, "same"))


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 3])
def test_headers_on_control_payloads_on_payload_group(p):
    for v in section(p, "bytes"):
        assert v["ring"] == (2 * (p - 1) * 4800 // p, 2 * (p - 1)) and v["check_bytes"] > 0


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 3])
def test_point_to_point_in_nccl_order(p):
    assert all(c == 48 for c in section(p, "p2p"))


@pytest.mark.mpi
def test_recv_out_mismatch_and_argument_checks():
    check_out_mismatch(section(3, "out_mismatch"), 3)
    check_mismatch(section(3, "mismatch"), 3)


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 3])
def test_ring_bytes_and_split(p):
    check_ring_bytes(section(p, "ring_bytes"), p)
    assert all(section(p, "misc"))


# ---------------------------------------------------------------- 3. on GPUs (NCCL)
def _host(y):
    if isinstance(y, (list, tuple)):
        return [_host(v) for v in y]
    return y.get() if hasattr(y, "get") and not isinstance(y, np.ndarray) else y


class OnHost:
    """A GPU communicator whose collectives hand back NumPy arrays, so that the NumPy
    assertions of run_collective_checks apply (the work itself stays on the GPU)."""

    def __init__(self, comm):
        self.comm = comm

    def __getattr__(self, name):
        f = getattr(self.comm, name)
        if name not in ("all_reduce", "reduce_scatter", "reduce", "broadcast", "all_gather", "gather", "scatter"):
            return f
        return lambda *a, **k: _host(f(*a, **k))


def gpu_body(comm):
    import cupy as cp

    p, r = comm.world_size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    assert comm.backend == "torch" and comm.xp is cp and comm.device == int(os.environ["LOCAL_RANK"])
    assert cp.cuda.Device().id == comm.device
    checks = run_collective_checks(OnHost(comm), ALGOS)
    for n in (0, 1, 1000, 100_003):  # point to point: CuPy in and out, NumPy in (copied to the GPU)
        for dt in (np.float32, np.float64, np.int8, np.bool_):
            want = (np.arange(n) + left).astype(dt)
            y = comm.sendrecv(cp.asarray((np.arange(n) + r).astype(dt)), right, left)
            assert isinstance(y, cp.ndarray) and y.device.id == comm.device and np.array_equal(y.get(), want)
            z = comm.sendrecv((np.arange(n) + r).astype(dt), right, left, out=np.empty(n, dt))
            assert isinstance(z, np.ndarray) and np.array_equal(z, want)
            checks += 2
    # a non-default CuPy stream: the inputs are written on it before NCCL reads them
    with cp.cuda.Stream(non_blocking=True):
        x = cp.arange(1 << 20, dtype=cp.float32) * (r + 1)  # every partial sum exact in float32 (p <= 4)
        y = comm.all_reduce(x)
        assert np.array_equal(y.get(), np.arange(1 << 20, dtype=np.float32) * (p * (p + 1) // 2))
    got, sizes = comm.all_to_all_v(cp.arange(2 * p) + 100 * r, [2 * p - (p - 1)] + [1] * (p - 1))
    assert sizes == [2 * p - (p - 1) if r == 0 else 1] * p
    if p > 1:
        sub = comm.split(r % 2)
        assert int(sub.all_reduce(cp.ones(3))[0].get()) == sub.world_size
    comm.barrier()
    return checks


def _gpus():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


needs_cuda_torch = pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch sees no CUDA GPU")


@pytest.mark.gpu
@needs_cuda_torch
def test_torch_nccl_on_every_gpu_here():
    require_mpi()
    p = min(_gpus(), 4)
    res = ms.launch(gpu_body, p, backend="torch", device="gpu", timeout=300)
    assert len(set(res)) == 1 and res[0] > 500


@pytest.mark.gpu
@needs_cuda_torch
def test_torch_nccl_under_torchrun(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("no torchrun next to this python")
    p = min(_gpus(), 2)
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import mlscale as ms
        comm = ms.comm.TorchComm(device="gpu")
        s = comm.all_reduce(np.arange(4.0) + comm.rank, algorithm="ring").get()
        t = comm.all_reduce(np.arange(4.0) + comm.rank).get()
        print(f"rank {comm.rank}/{comm.world_size} gpu {comm.device}: {s.tolist()} {t.tolist()}", flush=True)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    out = subprocess.run([torchrun, "--standalone", "--nproc-per-node", str(p), str(script)],
                         capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    want = (np.arange(4.0) * p + p * (p - 1) / 2).tolist()
    for r in range(p):
        assert f"rank {r}/{p} gpu {r}: {want} {want}" in out.stdout, out.stdout


@pytest.mark.gpu
@needs_cuda_torch
def test_torch_nccl_more_ranks_than_gpus_is_refused():
    with pytest.raises(ms.BackendUnavailable, match="GPU"):
        ms.launch(lambda comm: 0, _gpus() + 1, backend="torch", device="gpu")
