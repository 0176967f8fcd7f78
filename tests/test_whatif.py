"""mlscale.whatif: Megatron-LM's Table 1 (Narayanan et al. 2021) predicted from one
tensor-parallel layer run on shape-only arrays, the pipeline schedule and the dp cost model."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.meta import Meta, OutOfMemoryError, get_cluster
from mlscale.nn.flops import model_flops
from mlscale.nn.model import Sequential
from mlscale.nn.transformer import GPTConfig
from mlscale.parallel.tp_attention import TPBlock
from mlscale.whatif import TABLE1, compare_megatron, model_flops_eq3, predict, predict_row, row_config
from mlscale.whatif.megatron_table import SEQ_LEN, VOCAB

ROW = {r.name: r for r in TABLE1}


@pytest.fixture(scope="module")
def table():
    return compare_megatron()


def test_every_row_of_table1_within_15_percent(table):
    assert len(table) == 10
    errors = {row.name: err for row, _, err in table}
    assert all(abs(e) < 0.15 for e in errors.values()), errors
    assert max(abs(e) for e in errors.values()) < 0.05  # with the calibrated GEMM efficiency (0.71)


def test_uncalibrated_default_efficiency_is_within_10_percent_and_dropout_matters():
    from mlscale.meta.hardware import DEFAULT_EFFICIENCY

    rows = [ROW["1.7B"], ROW["1T"]]
    errs = [e for _, _, e in compare_megatron(rows, efficiency={"matmul": DEFAULT_EFFICIENCY["matmul"]})]
    assert all(abs(e) < 0.10 for e in errs), errs
    # no dropout kernels: the small model (P = b a s^2 large against its GEMMs) is overrated most
    small, big = (predict_row(r, dropout=False).tflops_per_gpu / predict_row(r).tflops_per_gpu for r in
                  (ROW["1.7B"], ROW["1T"]))
    assert small > 1.08 and 1.0 < big < 1.03


def test_breakdown_sums_to_step_time_and_is_plausible(table):
    for row, p, _ in table:
        b = p.breakdown
        assert sum(b.values()) == pytest.approx(p.step_time, rel=1e-12)
        assert all(v >= 0 for v in b.values()), (row.name, b)
        assert b["compute"] / p.step_time > 0.75  # Megatron's point: compute-bound at every scale
        assert (b["tp_comm"] == 0) == (row.tp == 1)
        assert (b["pp_bubble"] == 0 and b["pp_p2p"] == 0) == (row.pp == 1)
        assert p.num_gpus == row.gpus and p.config["global_batch"] == row.batch


def test_table_rows_are_self_consistent():
    for r in TABLE1:
        assert r.tp * r.pp * r.dp == r.gpus
        assert r.pct_peak == pytest.approx(100 * r.tflops / 312, abs=0.6)
        assert r.pflops == pytest.approx(r.tflops * r.gpus / 1000, rel=0.01)
        # the paper's eq. (2): P = 12 l h^2 (1 + 13/(12 h) + (V + s)/(12 l h))
        P = 12 * r.layers * r.hidden ** 2 * (1 + 13 / (12 * r.hidden) + (VOCAB + SEQ_LEN) / (12 * r.layers * r.hidden))
        assert P / 1e9 == pytest.approx(r.params_b, rel=0.01, abs=0.05)  # the paper rounds to 0.1B


def test_eq3_is_model_flops_plus_the_recomputed_forward():
    for r in TABLE1:
        cfg = row_config(r)
        tokens = r.batch * SEQ_LEN
        recomputed = 24 * tokens * r.layers * r.hidden ** 2 + 4 * r.batch * SEQ_LEN ** 2 * r.layers * r.hidden
        assert model_flops_eq3(r.batch, SEQ_LEN, r.layers, r.hidden, VOCAB) == \
            pytest.approx(model_flops(cfg, tokens) + recomputed, rel=1e-12)


def _one_layer(comm, cfg, b):
    from mlscale.meta import get_hardware
    from mlscale.whatif.predict import EFFICIENCY

    dev = Meta(get_hardware("A100-80GB-SXM").with_efficiency(**EFFICIENCY), comm=comm)
    block = TPBlock(comm, cfg)
    Sequential([block], dtype=np.float16, xp=dev)
    x = dev.zeros((b, cfg.seq_len, cfg.d_model), np.float16)
    t0, c0 = comm.clock, dev.costs.seconds
    block.forward(x)
    return comm.clock - t0, dev.costs.seconds - c0


def test_layer_time_is_the_meta_runs_clock():
    r = ROW["18B"]
    p = predict_row(r, dropout=False)  # the TPBlock alone (the dropout kernels are charged beside it)
    b = p.config["micro_batch"]
    cfg = GPTConfig(vocab_size=VOCAB, seq_len=SEQ_LEN, d_model=r.hidden, num_heads=r.heads, num_layers=1)
    on_nvlink = ms.launch(_one_layer, r.tp, args=(cfg, b), network=get_cluster("DGX-A100").network())
    free = ms.launch(_one_layer, r.tp, args=(cfg, b), network=ms.NetworkModel(alpha=0.0, beta=0.0))
    clock, compute = on_nvlink[0]
    assert p.layer["fwd"] == pytest.approx(clock, rel=1e-12)
    assert p.layer["fwd_compute"] == pytest.approx(compute, rel=1e-12)
    assert free[0][0] == pytest.approx(compute, rel=1e-9)  # no network: the clock is the roofline alone
    # two all-reduces of (1, s, h) fp16 forward on 8 GPUs' NVLink: at least the ring's 2 (p-1)/p n beta
    n = 2 * b * SEQ_LEN * r.hidden
    assert p.layer["tp_fwd"] >= 2 * 2 * 7 / 8 * n / 300e9


def test_directions():
    r = ROW["145B"]
    base = predict_row(r)
    more_mb = predict_row(r, global_batch=2 * r.batch)  # more micro-batches: smaller bubble fraction
    assert more_mb.bubble_fraction < base.bubble_fraction
    plain = predict_row(r, schedule="1f1b")  # interleaving shrinks the bubble v-fold
    assert plain.breakdown["pp_bubble"] > 1.8 * base.breakdown["pp_bubble"]
    assert plain.tflops_per_gpu < base.tflops_per_gpu
    small = ROW["1.7B"]
    # no recomputed forward: a shorter step, and every layer's activations kept
    no_rc, rc = predict_row(small, recompute=None, micro_batch=1), predict_row(small, micro_batch=1)
    assert no_rc.step_time < rc.step_time and no_rc.memory_peak > rc.memory_peak + 10e9  # Korthikanti: 24 x 0.66 GB
    small = ROW["7.5B"]
    more_dp = predict_row(small, dp=2 * small.dp, global_batch=2 * small.batch)  # weak scaling in dp
    b0, b1 = predict_row(small).breakdown, more_dp.breakdown
    assert b1["dp_comm"] > b0["dp_comm"]
    assert b1["compute"] == pytest.approx(b0["compute"], rel=1e-12)  # the same work per replica


def test_memory_of_every_row_fits_and_an_oom_config_raises(table):
    for row, p, _ in table:
        assert 0 < p.memory_peak < 80e9, (row.name, p.memory_peak / 2 ** 30)
        assert p.memory_by_kind["optimizer"] >= 6 * p.memory_by_kind["params"]  # 12 B vs 2 B a parameter
    r = ROW["1T"]
    with pytest.raises(OutOfMemoryError, match="CUDA out of memory"):
        predict_row(r, pp=8, dp=48, num_chunks=2)  # 16 layers of h=25600 a GPU: ~250 GB of model state
    with pytest.raises(OutOfMemoryError, match="recompute"):
        predict_row(ROW["145B"], recompute=None)  # why Megatron recomputed: every layer's activations kept


def test_bad_input_is_named():
    cfg = row_config(ROW["1.7B"])
    with pytest.raises(ValueError, match="tp=16"):
        predict(cfg, tp=16)
    with pytest.raises(ValueError, match="global_batch=100"):
        predict(cfg, dp=8, micro_batch=4, global_batch=100)
    with pytest.raises(ValueError, match="pp=5"):
        predict(cfg, pp=5)
    with pytest.raises(ValueError, match="schedule"):
        predict(cfg, schedule="gpipe")


def test_sequence_parallel_keeps_fewer_activations_for_about_the_same_time():
    r = ROW["18B"]
    plain, sp = predict_row(r), predict_row(r, sequence_parallel=True)
    assert sp.memory_by_kind["activations"] < plain.memory_by_kind["activations"]
    assert sp.memory_peak < plain.memory_peak
    # the same bytes on NVLink (all-gather + reduce-scatter = all-reduce), plus Megatron's regather in backward
    assert plain.breakdown["tp_comm"] <= sp.breakdown["tp_comm"] < 1.5 * plain.breakdown["tp_comm"]
    assert sp.tflops_per_gpu == pytest.approx(plain.tflops_per_gpu, rel=0.1)


def test_bench_megatron_prints_every_row(capsys):
    from mlscale.bench.megatron import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"| {r.name} " in out for r in TABLE1) and "meets the target" in out


def test_qk_scores_of_16bit_shape_only_arrays_are_one_16bit_tensor_core_gemm():
    from mlscale.nn.attention import _probs

    b, a, s, d = 2, 3, 64, 16
    dev = Meta("A100-80GB-SXM", record=True)
    q, k = dev.zeros((b, a, s, d), np.float16), dev.zeros((b, a, s, d), np.float16)
    dev.oplog.clear()
    p = _probs(q, k, True)
    (mm_op, mm_cls, mm_flops, mm_bytes, mm_t), (sm_op, _, _, sm_bytes, _) = dev.oplog
    assert (mm_op, mm_cls, sm_op, p.dtype) == ("matmul", "matmul", "softmax", np.float16)
    assert mm_flops == 2 * b * a * s * s * d and mm_bytes == q.nbytes + k.nbytes + p.nbytes  # 16-bit S written
    assert mm_t == pytest.approx(dev.hardware.op_time("matmul", mm_flops, mm_bytes, np.float16), rel=1e-12)
    assert sm_bytes == 2 * p.nbytes  # the softmax reads S (16-bit) and writes P


def test_second_source_korthikanti_table5_within_15_percent_and_the_22b_layer():
    from mlscale.whatif import compare_korthikanti
    from mlscale.whatif.megatron_table import KORTHIKANTI_TABLE4_22B

    res = compare_korthikanti()
    errs = [e for _, _, e in res]
    assert all(abs(e) < 0.15 for e in errs), errs
    assert errs == sorted(errs, reverse=True)  # it errs more, slower, as the model grows (no backward overlap)
    lay = res[0][1].layer  # 22B, tp 8, micro-batch 4
    assert 1e3 * lay["fwd"] == pytest.approx(KORTHIKANTI_TABLE4_22B["forward"], rel=0.15)
    assert 1e3 * lay["bwd"] == pytest.approx(KORTHIKANTI_TABLE4_22B["backward_full_recompute"], rel=0.15)
