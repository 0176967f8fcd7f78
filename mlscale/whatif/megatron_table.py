"""The Megatron-LM weak-scaling table: GPT models from 1.7B to 1T parameters on 32 to
3,072 A100 GPUs, and the throughput each run reached.

Source: D. Narayanan, M. Shoeybi, J. Casper, P. LeGresley, M. Patwary, V. Korthikanti,
D. Vainbrand, P. Kashinkunti, J. Bernauer, B. Catanzaro, A. Phanishayee, M. Zaharia,
"Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
SC 2021, arXiv:2104.04473, **Table 1** ("Weak-scaling throughput for GPT models ranging
from 1 billion to 1 trillion parameters"); the same rows are the image
``images/cases_april2021.png`` of the NVIDIA/Megatron-LM README ("Training Speed and
Scalability", 2021-2023 versions of the README: "All models use a vocabulary size of
51,200 and a sequence length of 2048 ... Each cluster node has 8 NVIDIA 80GB A100
GPUs ... the FLOPs are measured for end-to-end training, i.e., includes all operations
including data loading, optimization, and even logging").

Set-up of the runs (paper, section 5 and 5.1): NVIDIA Selene, DGX A100 nodes (8 x A100
80 GB on NVLink/NVSwitch, 8 x 200 Gb/s HDR InfiniBand per node), mixed precision (fp16),
full activation recomputation, the interleaved pipeline schedule with the scatter/gather
optimization for the runs with pipeline parallelism. The FLOPs are counted by the
paper's eq. (3), recomputation included:

    F = 96 B s l h^2 (1 + s / (6 h) + V / (16 l h))

(B batch, s = 2048, l layers, h hidden, V = 51,200). Peak: 312 TFLOP/s (A100 fp16).
The table does not give the micro-batch size nor the number of model chunks of the
interleaved schedule: see ``ASSUMED`` below and ``mlscale.whatif.predict``.
"""
from __future__ import annotations

from typing import NamedTuple

SEQ_LEN = 2048
VOCAB = 51200
PEAK_TFLOPS = 312.0
SOURCE = ("Narayanan et al. 2021, 'Efficient Large-Scale Language Model Training on GPU Clusters Using "
          "Megatron-LM', SC21, arXiv:2104.04473, Table 1; NVIDIA/Megatron-LM README (2021), cases_april2021.png")


class Row(NamedTuple):
    name: str            # the model size as the paper rounds it
    params_b: float      # billions of parameters (the paper's eq. 2)
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int           # global batch size (sequences)
    tflops: float        # achieved teraFLOP/s per GPU (eq. 3 FLOPs / time / GPUs)
    pct_peak: float      # percentage of the 312 TFLOP/s peak
    pflops: float        # achieved aggregate petaFLOP/s

    @property
    def dp(self):
        return self.gpus // (self.tp * self.pp)


TABLE1 = [
    Row("1.7B", 1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 44, 4.4),
    Row("3.6B", 3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 44, 8.8),
    Row("7.5B", 7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 46, 18.2),
    Row("18B", 18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 43, 34.6),
    Row("39B", 39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 44, 70.8),
    Row("76B", 76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 45, 143.8),
    Row("145B", 145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 47, 227.1),
    Row("310B", 310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 50, 297.4),
    Row("530B", 529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 52, 410.2),
    Row("1T", 1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 52, 502.0),
]

# What the table leaves out, and what the predictor assumes for it (stated, not fitted):
# micro-batch size 1 where there is a pipeline (the paper's PTD-P runs of Table 2 and
# its GPT-3 175B example script use 1) and 4 without one; model chunks per stage of the
# interleaved schedule: 2 where a stage's layers divide by 2, else 3 where they divide by
# 3 (76B: 15 layers a stage; 530B: 3), else 1.
ASSUMED = {"micro_batch_pp": 1, "micro_batch_no_pp": 4, "schedule": "interleaved", "recompute": "full",
           "sequence_parallel": False}


def chunks_for(row):
    """Model chunks per pipeline stage assumed for a row (1 without a pipeline)."""
    if row.pp == 1:
        return 1
    per_stage = row.layers // row.pp
    return 2 if per_stage % 2 == 0 else (3 if per_stage % 3 == 0 else 1)


def micro_batch_for(row):
    return ASSUMED["micro_batch_pp"] if row.pp > 1 else ASSUMED["micro_batch_no_pp"]


def model_flops_eq3(batch, seq_len, layers, hidden, vocab):
    """Narayanan et al. 2021, eq. (3): ``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` FLOPs per
    step, with full activation recomputation (4 passes over the layers: forward,
    recomputed forward, backward = 2 forwards; the LM head 3 passes)."""
    B, s, l, h, V = batch, seq_len, layers, hidden, vocab
    return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))


# -- a second source ------------------------------------------------------------------------
# V. Korthikanti, J. Casper, S. Lym, L. McAfee, M. Andersch, M. Shoeybi, B. Catanzaro,
# "Reducing Activation Recomputation in Large Transformer Models", MLSys 2023,
# arXiv:2205.05198: a year later, a newer Megatron-LM, its own runs on Selene (DGX A100,
# 8 x 200 Gb/s HDR IB a node), s = 2048, V = 51,200, no data parallelism. Table 3 (the
# configurations; "the interleaving schedule with three interleaving stages" for 175B and
# 530B: 3 chunks; the 1T's schedule is not stated: taken as 1F1B), Table 5 (end-to-end
# iteration time with full recomputation and without sequence parallelism: the set-up
# this predictor models; "present work", SP + selective recomputation, beside it), and
# Table 4 (one layer of the 22B model, micro-batch 4: forward 7.7 ms; backward 11.9 ms,
# 19.5 ms with full recomputation). Section 6.2: in their backward "we overlap all-reduce
# communication with the linear weight's gradient computation"; this predictor does not.
class KRow(NamedTuple):
    name: str
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    micro_batch: int
    chunks: int            # model chunks per stage (3 for 175B and 530B; 1T: assumed 1)
    time_full: float       # s per iteration, full recomputation, no SP (Table 5)
    time_present: float    # s per iteration, SP + selective recomputation (Table 5)
    mfu_present: float     # % (Table 5)


KORTHIKANTI_SOURCE = ("Korthikanti et al. 2022, 'Reducing Activation Recomputation in Large Transformer Models', "
                      "MLSys 2023, arXiv:2205.05198, Tables 3, 4 and 5")
KORTHIKANTI_TABLE5 = [
    KRow("22B", 64, 6144, 48, 8, 1, 8, 4, 4, 1, 1.42, 1.10, 41.5),
    KRow("175B", 96, 12288, 96, 8, 8, 64, 64, 1, 3, 18.13, 13.75, 51.4),
    KRow("530B", 128, 20480, 105, 8, 35, 280, 280, 1, 3, 49.05, 37.83, 56.0),
    KRow("1T", 160, 25600, 128, 8, 64, 512, 512, 1, 1, 94.42, 71.49, 56.3),
]
# Table 4: one layer of the 22B model (tp 8, micro-batch 4), milliseconds
KORTHIKANTI_TABLE4_22B = {"forward": 7.7, "backward": 11.9, "backward_full_recompute": 19.5}


__all__ = ["KRow", "KORTHIKANTI_SOURCE", "KORTHIKANTI_TABLE5", "KORTHIKANTI_TABLE4_22B", "Row", "TABLE1", "SOURCE",
           "SEQ_LEN", "VOCAB", "PEAK_TFLOPS", "ASSUMED", "chunks_for", "micro_batch_for", "model_flops_eq3"]
