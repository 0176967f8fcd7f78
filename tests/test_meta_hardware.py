"""The roofline model (mlscale.meta.hardware): op time = max(flops / (peak eff),
bytes / (bw eff_mem)), charged to the sim clock; presets from the data sheets; cluster
presets where a tp group inside a node is faster than one across nodes by the
bandwidth ratio."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.meta import CLUSTERS, HARDWARE, Meta, cluster_network, get_hardware
from mlscale.meta.hardware import DEFAULT_EFFICIENCY, DEFAULT_MEM_EFFICIENCY, Hardware


def _matmul_time(hw, m, k, n, itemsize, peak):
    flops, nbytes = 2 * m * k * n, itemsize * (m * k + k * n + m * n)
    return max(flops / (peak * hw.efficiency["matmul"]), nbytes / (hw.hbm_bandwidth * hw.mem_efficiency["matmul"]))


@pytest.mark.parametrize("name, dtype, key", [("A100-80GB-SXM", np.float16, "fp16"), ("H100-SXM", np.float32, "fp32"),
                                              ("T4", np.float16, "fp16"), ("A100-80GB-SXM", np.float64, None)])
@pytest.mark.parametrize("mkn", [(4096, 4096, 4096), (1, 8192, 8192)], ids=["compute-bound", "matvec"])
def test_matmul_time_is_the_roofline_formula(name, dtype, key, mkn):
    dev = Meta(name)
    hw = dev.hardware
    m, k, n = mkn
    a, b = dev.empty((m, k), dtype), dev.empty((k, n), dtype)
    a @ b
    peak = hw.peak[key] if key else hw.fp64_matmul
    want = _matmul_time(hw, m, k, n, np.dtype(dtype).itemsize, peak)
    assert dev.costs.time["matmul"] == pytest.approx(want, rel=1e-12)
    compute_bound = 2 * m * k * n / (peak * hw.efficiency["matmul"]) > want * (1 - 1e-12)
    assert compute_bound == (m > 1)  # a big GEMM is compute-bound, a matrix-vector product memory-bound


def test_tf32_and_efficiency_are_calibratable():
    hw = get_hardware("A100-80GB-SXM")
    f = 2 * 4096 ** 3
    assert hw.op_time("matmul", f, 0, np.float32) == pytest.approx(f / (19.5e12 * 0.75))
    assert hw.op_time("matmul", f, 0, np.float32, allow_tf32=True) == pytest.approx(f / (156e12 * 0.75))
    fast = hw.with_efficiency(matmul=0.5, mem={"elementwise": 0.4})
    assert fast.op_time("matmul", f, 0, np.float16) / hw.op_time("matmul", f, 0, np.float16) == pytest.approx(1.5)
    assert fast.op_time("elementwise", 1, 1e9, np.float32) == pytest.approx(1e9 / (2039e9 * 0.4))
    assert hw.efficiency == DEFAULT_EFFICIENCY and hw.mem_efficiency == DEFAULT_MEM_EFFICIENCY  # unchanged
    with pytest.raises(ValueError, match="fraction of peak"):
        hw.with_efficiency(matmul=1.5)
    with pytest.raises(ValueError, match="unknown op class"):
        hw.with_efficiency(gemm=0.5)
    with pytest.raises(ValueError, match="unknown accelerator 'V100'"):
        get_hardware("V100")
    t4 = get_hardware("T4")  # no TF32 on Turing: float32 matmuls stay at the FP32 rate
    assert t4.op_time("matmul", f, 0, np.float32, allow_tf32=True) == pytest.approx(f / (8.1e12 * 0.75))


def test_presets_carry_the_data_sheet_figures_and_sources():
    a, h, t = HARDWARE["A100-80GB-SXM"], HARDWARE["H100-SXM"], HARDWARE["T4"]
    assert (a.peak["bf16"], a.peak["tf32"], a.peak["fp32"], a.hbm_bandwidth) == (312e12, 156e12, 19.5e12, 2039e9)
    assert (h.peak["bf16"], h.peak["fp32"], h.hbm_bandwidth) == (989.5e12, 67e12, 3.35e12)
    assert (t.peak["fp16"], t.peak["fp32"], t.hbm_bandwidth, t.memory_bytes) == (65e12, 8.1e12, 320e9, 16 * 2**30)
    assert a.memory_bytes == h.memory_bytes == 80 * 2**30
    for hw in HARDWARE.values():
        assert "data sheet" in hw.source
    for c in CLUSTERS.values():
        assert c.gpus_per_node == 8 and "data sheet" in c.source


def test_ops_advance_the_sim_clock_by_their_roofline_time():
    def program(comm):
        dev = Meta("H100-SXM", comm=comm)
        a, b = dev.empty((2048, 1024), np.float16), dev.empty((1024, 4096), np.float16)
        t0 = comm.clock
        c = a @ b
        t1 = comm.clock
        c = c * 2.0
        return t1 - t0, comm.clock - t1, dev.costs.time["matmul"], dev.costs.time["elementwise"]

    hw = get_hardware("H100-SXM")
    res = ms.launch(program, world_size=2, network=ms.NetworkModel(speeds=[1.0, 0.5]))
    mm = _matmul_time(hw, 2048, 1024, 4096, 2, hw.peak["fp16"])
    ew = 2 * 2 * 2048 * 4096 / (hw.hbm_bandwidth * hw.mem_efficiency["elementwise"])
    assert res[0] == pytest.approx((mm, ew, mm, ew), rel=1e-12)
    assert res[1][:2] == pytest.approx((2 * mm, 2 * ew), rel=1e-12)  # a straggler at half speed takes twice as long


def _pair_all_reduce(comm, pairs, nbytes):
    color = next((i for i, p in enumerate(pairs) if comm.rank in p), None)
    sub = comm.split(color)
    if sub is None:
        return None
    x = np.zeros(nbytes // 4, np.float32)
    t0 = comm.clock
    sub.all_reduce(x, algorithm="ring")
    return comm.clock - t0


@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_tp_group_inside_a_node_is_faster_by_the_bandwidth_ratio(name):
    c = CLUSTERS[name]
    n = 64 * 2**20
    net = cluster_network(name)
    assert ms.NetworkModel.preset(name) == net and net.ranks_per_node == 8
    assert net.link(0, 7) == (c.intra_latency, 1 / c.intra_bandwidth)
    assert net.link(7, 8) == (c.inter_latency, 1 / c.inter_bandwidth)
    res = ms.launch(_pair_all_reduce, world_size=16, args=([(0, 1), (2, 10)], n), network=net)
    inside, across = res[0], res[2]
    # ring all-reduce on p = 2: 2 (p - 1) alpha + 2 ((p - 1) / p) n beta = 2 alpha + n beta
    assert inside == pytest.approx(2 * c.intra_latency + n / c.intra_bandwidth, rel=1e-9)
    assert across == pytest.approx(2 * c.inter_latency + n / c.inter_bandwidth, rel=1e-9)
    ratio = (across - 2 * c.inter_latency) / (inside - 2 * c.intra_latency)
    assert ratio == pytest.approx(c.intra_bandwidth / c.inter_bandwidth, rel=1e-9)  # 12 on DGX-A100, 9 on DGX-H100


def test_hardware_is_a_plain_dataclass_one_can_build():
    hw = Hardware("toy", {"fp32": 1e12}, hbm_bandwidth=1e11, memory_bytes=2**30, source="made up")
    assert hw.op_time("elementwise", 10, 1e11 * 0.8, np.float32) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="toy has no fp64 rate"):
        hw.op_time("matmul", 1, 0, np.float64)


def test_unknown_cluster_is_named():
    with pytest.raises(ValueError, match="unknown cluster 'DGX-2'.*DGX-A100"):
        ms.NetworkModel.preset("DGX-2")


def _overlap(comm):
    dev = Meta("H100-SXM", comm=comm)
    grads = dev.zeros(1 << 23, np.float32)
    a, b = dev.empty((4096, 4096), np.float16), dev.empty((4096, 4096), np.float16)
    t0 = comm.clock
    req = comm.start(lambda c, g: c.all_reduce(g, algorithm="ring"), grads)  # DDP's overlap
    a @ b
    t_main = comm.clock - t0
    req.wait()
    return t_main, dev.costs.time["matmul"], dev.costs.time["elementwise"], comm.clock - t0


def test_reductions_on_the_communication_stream_charge_the_stream_not_the_rank():
    net = ms.NetworkModel(alpha=0.0, beta=1 / 50e9)
    hw, n = get_hardware("H100-SXM"), 4 << 23
    zeros = n / (hw.hbm_bandwidth * hw.mem_efficiency["elementwise"])  # writing the grads, before t0
    for t_main, mm, ew, total in ms.launch(_overlap, world_size=2, network=net):
        assert t_main == pytest.approx(mm, rel=1e-12)  # the matmul alone: the stream ran beside it
        reduce = ew - zeros  # the ring's reduction of the received half, on the stream
        assert reduce > 0 and total == pytest.approx(n / 50e9 + reduce, rel=1e-12)  # p = 2: n beta, then reduce
