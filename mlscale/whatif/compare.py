"""Table 1 of Narayanan et al. 2021 against :func:`mlscale.whatif.predict`, row by row.

    for row, pred, err in compare_megatron():
        print(row.name, row.tflops, pred.tflops_per_gpu, err)   # err: (predicted - published) / published
"""
from __future__ import annotations

from .megatron_table import ASSUMED, SEQ_LEN, TABLE1, VOCAB, chunks_for, micro_batch_for
from .predict import predict


def row_config(row):
    """The GPTConfig of a Table 1 row (s = 2048, V = 51,200, d_ff = 4 h, LayerNorm, biases)."""
    from ..nn.transformer import GPTConfig

    return GPTConfig(vocab_size=VOCAB, seq_len=SEQ_LEN, d_model=row.hidden, num_heads=row.heads,
                     num_layers=row.layers)


def predict_row(row, **overrides):
    """:func:`predict` with the row's configuration and the stated assumptions (``ASSUMED``)."""
    kw = dict(cluster="DGX-A100", tp=row.tp, pp=row.pp, dp=row.dp, micro_batch=micro_batch_for(row),
              global_batch=row.batch, schedule=ASSUMED["schedule"], num_chunks=chunks_for(row),
              recompute=ASSUMED["recompute"], sequence_parallel=ASSUMED["sequence_parallel"])
    kw.update(overrides)
    return predict(row_config(row), **kw)


def compare_megatron(rows=None, **overrides):
    """``[(row, prediction, relative error)]`` for the rows (default: all of Table 1)."""
    out = []
    for row in TABLE1 if rows is None else rows:
        p = predict_row(row, **overrides)
        out.append((row, p, p.tflops_per_gpu / row.tflops - 1))
    return out


__all__ = ["row_config", "predict_row", "compare_megatron", "compare_korthikanti", "calibrate_matmul"]


def compare_korthikanti(**overrides):
    """The second source: Korthikanti et al. 2022, Table 5 (full recomputation, no SP, no
    dp). ``[(row, prediction, error)]``, error = published time / predicted time - 1 (the
    error of the predicted throughput), with the GEMM efficiency calibrated on Table 1."""
    from ..nn.transformer import GPTConfig
    from .megatron_table import KORTHIKANTI_TABLE5

    out = []
    for r in KORTHIKANTI_TABLE5:
        cfg = GPTConfig(vocab_size=VOCAB, seq_len=SEQ_LEN, d_model=r.hidden, num_heads=r.heads, num_layers=r.layers)
        kw = dict(cluster="DGX-A100", tp=r.tp, pp=r.pp, dp=r.gpus // (r.tp * r.pp), micro_batch=r.micro_batch,
                  global_batch=r.batch, schedule="interleaved", num_chunks=r.chunks, recompute="full")
        kw.update(overrides)
        p = predict(cfg, **kw)
        out.append((r, p, r.time_full / p.step_time - 1))
    return out


def calibrate_matmul(grid=None):
    """The GEMM efficiency (of the fp16 peak) with the smallest largest |error| over Table 1:
    the ONE number fitted, on all rows at once. Returns ``(best, {eff: max |error|})``."""
    grid = [round(0.60 + 0.01 * i, 2) for i in range(21)] if grid is None else grid
    worst = {e: max(abs(err) for _, _, err in compare_megatron(efficiency={"matmul": e})) for e in grid}
    return min(worst, key=worst.get), worst
