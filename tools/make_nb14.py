"""Write notebooks/14_planning_a_training_run.ipynb (issue 12): Megatron-LM's Table 1
reproduced by ``mlscale.whatif.predict``, a search over 3D-parallel configurations of the
39B row on 512 DGX-A100 GPUs, and the model-state memory exercise (``mlscale.check.planning``).

    python tools/make_nb14.py           # write the notebook (no outputs)
    python tools/setup_cell.py --sync   # put the set-up cell in
    OMP_NUM_THREADS=1 python tools/execute_notebooks.py 14

The numbers the markdown quotes are computed here with the same code the notebook's cells
run (the search cell's source is executed here too), so text and outputs agree.
"""
from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NAME = "14_planning_a_training_run"
PATH = ROOT / "notebooks" / f"{NAME}.ipynb"

IMPORTS = """\
import dataclasses
import itertools

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

import mlscale as ms
from mlscale import whatif
from mlscale.meta import get_hardware
from mlscale.whatif.megatron_table import ASSUMED, PEAK_TFLOPS, model_flops_eq3
from mlscale.check import hint, solution
from mlscale.check import planning as check_plan"""

TABLE = """\
table = whatif.compare_megatron()
print(f"GEMM efficiency (the one calibrated number): {whatif.EFFICIENCY['matmul']:.2f} of the 312 TFLOP/s fp16 peak")
print("assumed (Table 1 does not say):", ASSUMED, "\\n")
print(f"{'model':>6} {'GPUs':>5} {'tp':>3} {'pp':>3} {'dp':>4} {'batch':>5} | {'published':>9} {'predicted':>9} "
      f"{'error':>7} | {'memory':>8}")
for row, p, err in table:
    print(f"{row.name:>6} {row.gpus:>5} {row.tp:>3} {row.pp:>3} {row.dp:>4} {row.batch:>5} | {row.tflops:>9.1f} "
          f"{p.tflops_per_gpu:>9.1f} {100 * err:>+6.1f}% | {p.memory_peak / 2**30:>5.1f} GiB")
worst = max(table, key=lambda t: abs(t[2]))
print(f"\\nlargest error: {100 * worst[2]:+.1f}% ({worst[0].name}); TFLOP/s per GPU, eq. (3) FLOPs "
      f"(recomputation counted)")"""

BARS = """\
names = [row.name for row, _, _ in table]
x = np.arange(len(table))
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 3.8))
ax.bar(x - 0.2, [row.tflops for row, _, _ in table], 0.4, label="published (Narayanan et al. 2021)")
ax.bar(x + 0.2, [p.tflops_per_gpu for _, p, _ in table], 0.4, label="predicted (mlscale.whatif)")
ax.set_xticks(x, names)
ax.set_ylabel("TFLOP/s per GPU")
ax.set_ylim(0, 230)
ax.set_title("Megatron-LM Table 1: 1.7B on 32 GPUs ... 1T on 3,072")
ax.legend(loc="upper left", ncol=2, fontsize=8)
parts = ["compute", "tp_comm", "pp_p2p", "pp_bubble", "dp_comm", "optimizer"]
bottom = np.zeros(len(table))
for part in parts:
    frac = np.array([p.breakdown[part] / p.step_time for _, p, _ in table])
    bx.bar(x, frac, 0.6, bottom=bottom, label=part)
    bottom += frac
bx.set_xticks(x, names)
bx.set_ylabel("fraction of the step")
bx.set_title("where a predicted step goes")
bx.legend(loc="lower left", fontsize=8, ncol=2)
fig.tight_layout()"""

SETUP = """\
row = {r.name: r for r in whatif.TABLE1}["39B"]
cfg = whatif.row_config(row)
N, B = row.gpus, row.batch            # 512 GPUs, a global batch of 1,536 sequences of 2,048 tokens
hbm = get_hardware("A100-80GB-SXM").memory_bytes
# the same A100 with unlimited memory: predict does not stop at 80 GiB, so we see how far over a config is
roomy = dataclasses.replace(get_hardware("A100-80GB-SXM"), name="A100 (unlimited memory)", memory_bytes=2**50)
useful = model_flops_eq3(B, cfg.seq_len, cfg.num_layers, cfg.d_model, cfg.vocab_size) * 72 / 96  # no recompute


def mfu(p):
    \"\"\"Model FLOPs utilization (Chowdhery et al. 2022): the model's FLOPs (no recomputation) per second
    per GPU, over the 312 TFLOP/s peak. Same batch, same GPUs: it ranks configurations by step time.\"\"\"
    return useful / (p.step_time * N * PEAK_TFLOPS * 1e12)


space = []
for tp, pp, mb, recompute, chunks in itertools.product((1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2, 4),
                                                       ("full", None), (1, 2)):
    dp = N // (tp * pp)
    if B % (mb * dp) or (pp == 1 and chunks > 1) or (cfg.num_layers // pp) % chunks:
        continue                      # the batch must split into micro-batches; chunks must split a stage
    if chunks > 1 and (B // (mb * dp)) % pp:
        continue                      # interleaving needs a multiple of pp micro-batches
    space.append(dict(tp=tp, pp=pp, dp=dp, micro_batch=mb, recompute=recompute, num_chunks=chunks))
print(f"{len(space)} configurations of tp x pp x dp = {N}")"""

SEARCH = """\
# NBVAL_IGNORE_OUTPUT
runs = []
for c in tqdm(space, desc="predict"):
    p = whatif.predict(cfg, "DGX-A100", global_batch=B, schedule="interleaved", hardware=roomy, **c)
    runs.append(dict(c, step=p.step_time, mfu=mfu(p), tflops=p.tflops_per_gpu, memory=p.memory_peak,
                     fits=p.memory_peak <= hbm, optimizer=p.memory_by_kind["optimizer"], pred=p))"""

RESULTS = """\
def label(r):
    return (f"tp={r['tp']} pp={r['pp']} dp={r['dp']} mb={r['micro_batch']} v={r['num_chunks']} "
            f"recompute={r['recompute']}")


def line(r):
    return f"  {label(r)}: {r['step']:.2f} s a step, MFU {100 * r['mfu']:.1f}%, {r['memory'] / 2**30:.1f} GiB"


fit = sorted((r for r in runs if r["fits"]), key=lambda r: r["step"])
best = fit[0]
best_full = next(r for r in fit if r["recompute"] == "full")   # the published run's setting
best_any = min(runs, key=lambda r: r["step"])
published = next(r for r in runs if (r["tp"], r["pp"], r["micro_batch"], r["recompute"], r["num_chunks"]) ==
                 (row.tp, row.pp, 1, "full", 2))
print(f"{len(runs)} configurations, {len(fit)} fit in 80 GiB\\n")
print("the five fastest that fit:")
for r in fit[:5]:
    print(line(r))
print("\\nthe fastest that fits with full recomputation (as the published run):")
print(line(best_full))
print(f"\\nthe published run's configuration (micro-batch 1 and 2 chunks assumed), rank {fit.index(published) + 1} "
      f"of {len(fit)}:")
print(line(published))
print(f"\\nthe fastest of all, fits or not:\\n{line(best_any)}")"""

SCATTER = """\
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.5), gridspec_kw={"width_ratios": [3, 2]})
colours = {1: "tab:gray", 2: "tab:green", 4: "tab:blue", 8: "tab:red"}
for (tp, colour), (recompute, marker) in itertools.product(colours.items(), (("full", "o"), (None, "^"))):
    rs = [r for r in runs if r["tp"] == tp and r["recompute"] == recompute]
    ax.scatter([r["memory"] / 2**30 for r in rs], [100 * r["mfu"] for r in rs], s=20, color=colour, alpha=0.75,
               marker=marker, label=f"tp = {tp}" + (", full recompute" if recompute else ", no recompute"))
ax.axvline(hbm / 2**30, color="k", ls="--", lw=1)
ax.text(hbm / 2**30 * 1.05, 22, "80 GiB", fontsize=9)
ax.scatter([best["memory"] / 2**30], [100 * best["mfu"]], s=220, facecolors="none", edgecolors="k", lw=2,
           label="best that fits")
ax.scatter([published["memory"] / 2**30], [100 * published["mfu"]], s=160, marker="*", color="gold",
           edgecolors="k", zorder=3, label="published run (tp 8, pp 2)")
ax.set_xscale("log")
ax.set_xlabel("memory per GPU, stage 0 (GiB, log scale)")
ax.set_ylabel("MFU (%)")
ax.set_title(f"39B on {N} A100s: {len(runs)} configurations")
ax.legend(fontsize=7, loc="lower left", ncol=2)
tps, pps = (1, 2, 4, 8), (1, 2, 4, 8, 16)
grid = np.full((len(pps), len(tps)), np.nan)
for r in fit:
    i, j = pps.index(r["pp"]), tps.index(r["tp"])
    grid[i, j] = np.fmax(grid[i, j], 100 * r["mfu"])
im = bx.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
for i in range(len(pps)):
    for j in range(len(tps)):
        bx.text(j, i, "OOM" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center",
                color="k" if np.isnan(grid[i, j]) else "w", fontsize=9)
bx.set_xticks(range(len(tps)), tps)
bx.set_yticks(range(len(pps)), pps)
bx.set_xlabel("tp")
bx.set_ylabel("pp")
bx.set_title("best MFU (%) that fits, per (tp, pp)")
fig.colorbar(im, ax=bx)
fig.tight_layout()"""

BREAKDOWN = """\
cols = {"published": published, "best, full recompute": best_full, "best": best}
print(f"{'seconds a step':>14}" + "".join(f"{k:>22}" for k in cols))
heads = [f"tp {r['tp']}, pp {r['pp']}, {r['recompute']}" for r in cols.values()]
print(f"{'':>14}" + "".join(f"{h:>22}" for h in heads))
for part in ["compute", "tp_comm", "pp_p2p", "pp_bubble", "dp_comm", "optimizer"]:
    print(f"{part:>14}" + "".join(f"{r['pred'].breakdown[part]:>22.3f}" for r in cols.values()))
print(f"{'step':>14}" + "".join(f"{r['step']:>22.3f}" for r in cols.values()))"""

EXERCISE = """\
def memory_per_gpu(params, tp, pp, dp, zero_stage):
    # bytes of model state on one GPU: 16-bit params and grads, fp32 Adam state (16 B a parameter),
    # the GPU's share of the parameters, and what ZeRO stage zero_stage shards over the dp replicas
    raise NotImplementedError


verdict = check_plan.memory_per_gpu(memory_per_gpu)"""

REFERENCE = """\
print(check_plan.memory_per_gpu(check_plan.memory_per_gpu_solution, verbose=False).summary())
p = published["pred"]
kinds = p.memory_by_kind
state = kinds["params"] + kinds["grads"] + kinds["optimizer"]
nparams = kinds["params"] // 2          # the 16-bit parameters of stage 0, counted by the Meta tracker
print(f"\\n39B, tp 8, pp 2 (stage 0): the Meta tracker holds {state / 1e9:.2f} GB of model state "
      f"= {state / nparams:.0f} B x {nparams / 1e9:.3f} G parameters")
mine = check_plan.memory_per_gpu_solution(nparams, 1, 1, row.dp, 0)   # stage 0's own count, one GPU
print(f"the formula on stage 0's {nparams / 1e9:.3f} G parameters: {mine / 1e9:.2f} GB, equal: {mine == state}")
even = row.params_b * 1e9 / (row.tp * row.pp)
print(f"the formula, all {row.params_b}e9 parameters spread evenly over tp pp = {row.tp * row.pp} GPUs: "
      f"{check_plan.memory_per_gpu_solution(row.params_b * 1e9, row.tp, row.pp, row.dp, 0) / 1e9:.2f} GB")
print(f"stage 0 holds {(nparams - even) / 1e6:.0f} M parameters more than the even share: the embeddings "
      f"(word: {cfg.vocab_size // row.tp} x {cfg.d_model} a tp rank; position: {cfg.seq_len} x {cfg.d_model})")"""

ZERO = """\
runs1 = []   # the same search, now predict(..., zero_stage=1): the optimizer state sharded over dp
for c in space:
    p = whatif.predict(cfg, "DGX-A100", global_batch=B, schedule="interleaved", hardware=roomy, zero_stage=1, **c)
    runs1.append(dict(c, step=p.step_time, mfu=mfu(p), memory=p.memory_peak, fits=p.memory_peak <= hbm, pred=p))
plain = {label(r): r for r in runs}
fit1 = sorted((r for r in runs1 if r["fits"]), key=lambda r: r["step"])
new = [r for r in fit1 if not plain[label(r)]["fits"]]
print(f"with ZeRO-1: {len(fit1)} configurations fit (without: {len(fit)}); {len(new)} newly fit")
for r in fit1[:3]:
    was = plain[label(r)]
    print(f"  {label(r)}: {r['step']:.2f} s (was {was['step']:.2f}), MFU {100 * r['mfu']:.1f}%, "
          f"{r['memory'] / 2**30:.1f} GiB (was {was['memory'] / 2**30:.1f})")
pub1 = next(r for r in runs1 if label(r) == label(published))
print(f"the published configuration: {published['memory'] / 2**30:.1f} -> {pub1['memory'] / 2**30:.1f} GiB, "
      f"{published['step']:.2f} -> {pub1['step']:.2f} s a step")"""

STAGES = """\
b1 = fit1[0]
picks = {"the best without ZeRO": best, "the best with ZeRO-1": b1}
keys = ("tp", "pp", "dp", "micro_batch", "recompute", "num_chunks")
stages = {name: [whatif.predict(cfg, "DGX-A100", global_batch=B, schedule="interleaved", hardware=roomy,
                                zero_stage=z, **{k: r[k] for k in keys}) for z in range(4)]
          for name, r in picks.items()}
for name, ps in stages.items():
    print(f"{name}, {label(picks[name])}:")
    print(f"{'ZeRO':>6} | {'memory':>9} {'params':>7} {'grads':>6} {'optim.':>6} {'activ.':>6} | "
          f"{'step':>7} {'dp_comm':>8} {'optimizer':>9} {'bubble':>7} {'MFU':>6}")
    for z, p in enumerate(ps):
        k, b = p.memory_by_kind, p.breakdown
        print(f"{z:>6} | {p.memory_peak / 2**30:>5.1f} GiB {k['params'] / 2**30:>7.1f} {k['grads'] / 2**30:>6.1f} "
              f"{k['optimizer'] / 2**30:>6.1f} {k['activations'] / 2**30:>6.1f} | {p.step_time:>5.2f} s "
              f"{b['dp_comm']:>8.2f} {b['optimizer']:>9.3f} {b['pp_bubble']:>7.2f} {100 * mfu(p):>5.1f}%")
    print()
print("GiB (stage 0 of the pipeline, at its peak) and seconds a step")"""


def numbers():
    """Run the notebook's computations here (the search without a progress bar) for the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    ns = {}
    exec(IMPORTS.replace("from tqdm.auto import tqdm", "tqdm = lambda x, **k: x"), ns)
    for src in (TABLE, SETUP, SEARCH, RESULTS, ZERO, STAGES):
        exec(src, ns)
    return ns


def cells(ns):
    table, best, published, fit, runs = ns["table"], ns["best"], ns["published"], ns["fit"], ns["runs"]
    worst = max(table, key=lambda t: abs(t[2]))
    fit1, new, plain, stages = ns["fit1"], ns["new"], ns["plain"], ns["stages"]
    pct = lambda r: f"{100 * r['mfu']:.1f}%"  # noqa: E731
    gib = lambda v: f"{v / 2**30:.1f} GiB"  # noqa: E731
    b1 = fit1[0]
    best_full = ns["best_full"]
    d_tp = published["pred"].breakdown["tp_comm"] - best_full["pred"].breakdown["tp_comm"]
    d_comp = published["pred"].breakdown["compute"] - best_full["pred"].breakdown["compute"]
    d_bub = best_full["pred"].breakdown["pp_bubble"] - published["pred"].breakdown["pp_bubble"]
    # the claims the markdown makes, held to the numbers
    assert not any(r["pp"] == 1 for r in fit) and all(r["recompute"] is None and r["pp"] >= 2 for r in fit[:5])
    assert d_tp > 0 and d_comp > 0 and d_bub > 0 and best_full["tp"] < published["tp"]
    assert (best_full["step"] / best["step"] - 1) > 0.2
    assert best_full["step"] / best["step"] > published["step"] / best_full["step"]  # "most of it"
    assert best["tp"] < published["tp"] and best_full["pp"] > published["pp"]
    assert best_full["pred"].config["num_chunks"] == 2 and not plain[ns["label"](b1)]["fits"]
    assert b1["step"] < best["step"] and all(r["step"] <= plain[ns["label"](r)]["step"] for r in ns["runs1"])
    sb, s1 = stages["the best without ZeRO"], stages["the best with ZeRO-1"]
    for ps in (sb, s1):  # memory falls stage by stage; time: stage 1 <= 0 < 2 < 3; dp bytes the same at 0 and 1
        assert all(a.memory_peak > b.memory_peak for a, b in zip(ps, ps[1:]))
        assert ps[1].step_time <= ps[0].step_time < ps[2].step_time < ps[3].step_time
        assert abs(ps[1].breakdown["dp_comm"] / ps[0].breakdown["dp_comm"] - 1) < 1e-12
        assert ps[0].breakdown["optimizer"] / ps[1].breakdown["optimizer"] > 0.9 * ps[0].config["dp"]
        assert ps[2].step_time / ps[1].step_time > 1.3 and ps[3].step_time / ps[2].step_time > 1.5
    hbm = ns["hbm"]
    assert sb[0].memory_peak <= hbm < s1[0].memory_peak and s1[1].memory_peak <= hbm
    m_b = sb[0].config["num_microbatches"]
    badge = f"notebooks/{NAME}.ipynb"
    md = [new_markdown_cell(f"""\
# 14 · Planning a training run

[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/mlscale/mlscale/main?urlpath=lab/tree/{badge})
[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mlscale/mlscale/blob/main/{badge})

Before renting 512 GPUs for a month, one wants to know which tensor-parallel, pipeline-parallel
and data-parallel sizes to use, which micro-batch, whether to recompute activations, and whether
the model fits at all. `mlscale.whatif.predict` answers that on a laptop: it runs **the real
mlscale code** of one tensor-parallel layer on shape-only arrays (`mlscale.meta`: no data, a
roofline clock and a memory tracker), on the simulator's clock with the cluster's NVLink, then
plays the pipeline schedule with those times and adds the data-parallel all-reduce from the
cost model (notebooks 11-13). This notebook takes under a minute:

1. **the published table reproduced**: Megatron-LM's weak-scaling table (Narayanan et al. 2021,
   Table 1: 1.7B parameters on 32 A100s up to 1T on 3,072), published against predicted;
2. **planning**: every configuration of the 39B model on 512 GPUs, its MFU against its memory,
   the best that fits in 80 GiB against what the published run used;
3. **the exercise**: the model-state memory of one GPU, with ZeRO (checked by `mlscale.check`),
   and what ZeRO stages 1, 2 and 3 change in the plan, predicted (`predict(..., zero_stage=...)`).

The first cell installs what the platform lacks (only on Colab)."""),
          new_code_cell("# set-up cell: written by tools/setup_cell.py --sync"),
          new_code_cell(IMPORTS),
          new_code_cell("""\
# NBVAL_IGNORE_OUTPUT
report = ms.doctor(verbose=False)
print("engine in this notebook: sim (simulated ranks, deterministic virtual clocks) on shape-only arrays")
print("GPUs here:", ", ".join(report.gpus) if report.gpus else "none (none needed: nothing here runs on one)")"""),
          new_markdown_cell(f"""\
## 1. The published table, reproduced

Each row of Table 1 is one training run on NVIDIA's Selene (DGX A100 nodes: 8 GPUs on NVLink,
one 200 Gb/s InfiniBand rail per GPU), with full activation recomputation and the interleaved
pipeline schedule. The paper gives the model, tp, pp, the GPU count, the batch, and the
TFLOP/s per GPU it reached, counted by its eq. (3),
$F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h))$, recomputation included.

What the predictor knows: the A100's data sheet (312 TFLOP/s fp16, 2,039 GB/s, 80 GiB), the
DGX's link speeds, and **one calibrated number**: the fraction of the tensor-core peak a large
GEMM reaches, {ns['whatif'].EFFICIENCY['matmul']:.2f}, fitted once on all ten rows together
(`whatif.calibrate_matmul`). What the table does not say is assumed and stated: micro-batch 1
with a pipeline and 4 without, 2 model chunks a stage where the layers divide by 2. Everything
else (attention, softmax, dropout, LayerNorm, every all-reduce on NVLink, the pipeline
bubble, the dp all-reduce across nodes, Adam) is the program run on the simulator."""),
          new_code_cell(TABLE),
          new_code_cell(BARS),
          new_markdown_cell(f"""\
Every row within {100 * abs(worst[2]):.1f}% (the largest error, {100 * worst[2]:+.1f}%, is the
{worst[0].name} row), from 32 to 3,072 GPUs, with one fitted number. The right-hand chart says
why the per-GPU throughput barely moves over a 600-fold range of model sizes, the paper's point:
with tp inside a node and pp across nodes, every run stays compute-bound; the tensor-parallel
all-reduces on NVLink take the next slice, the pipeline bubble a few percent, the data-parallel
all-reduce and the optimizer little.

What the model leaves out (`mlscale/whatif/predict.py` lists it): stragglers, the contention
of many rings on one switch, the data loader, and the overlap of the backward's all-reduces
with the weight-gradient GEMMs that later Megatron versions do. It is a model; the table says
how far to trust it."""),
          new_markdown_cell(f"""\
## 2. Planning: 39B parameters on 512 GPUs

Take the 39B row (48 layers, hidden size 8,192, 64 heads, a batch of 1,536 sequences) and its
512 DGX-A100 GPUs, and ask the planner's question: **which configuration?** We try
tp in {{1, 2, 4, 8}} (inside a node: `predict` refuses more, Narayanan et al.'s first
takeaway), pp in {{1, 2, 4, 8, 16}}, dp = 512 / (tp pp), micro-batch 1, 2 or 4, full
recomputation or none, 1 or 2 model chunks a stage, wherever the batch and the layers split.

The throughput to compare is **MFU**, model FLOPs utilization (Chowdhery et al. 2022, PaLM): the
model's own FLOPs, 72 B s l h^2 (...), without the recomputed forward that eq. (3) counts. A
run that recomputes does more work for the same step; MFU does not reward it for that, so it
ranks configurations by step time.

`predict` raises the CUDA out-of-memory error past 80 GiB; here it runs on the same A100 with
unlimited memory, so that we also see *how far* over a configuration is."""),
          new_code_cell(SETUP),
          new_code_cell(SEARCH),
          new_code_cell(RESULTS),
          new_code_cell(SCATTER),
          new_markdown_cell(f"""\
Of the {len(runs)} configurations, {len(fit)} fit. None without a pipeline does: 16 B a parameter
of 39.1 G parameters over tp = 8 GPUs is already {gib(16 * ns["row"].params_b * 1e9 / 8)} of model state
before a single activation. Two effects decide the rest.

**Recomputation.** The five fastest that fit all keep their activations instead of
recomputing them: with pp >= 2 each GPU holds few enough layers that it can afford to. The best,
`{ns['label'](best)}`, takes {best['step']:.2f} s a step (MFU {pct(best)}, {gib(best['memory'])});
the best with full recomputation, `{ns['label'](best_full)}`, {best_full['step']:.2f} s (MFU
{pct(best_full)}). Recomputing everything costs a forward pass more a micro-batch,
{100 * (best_full['step'] / best['step'] - 1):.0f}% more time here, best against best: this is what Korthikanti et al. 2022
went after with *selective* recomputation (only
the attention's s x s part; `predict` models full recomputation or none).

**tp against pp.** The published configuration, with full recomputation like every Table 1
run, is predicted at {published['step']:.2f} s a step, MFU {pct(published)} (the paper's 138
TFLOP/s are 44% of the peak with eq. (3)'s recomputed forward counted; MFU counts 3/4 of those
FLOPs), rank {fit.index(published) + 1} of {len(fit)}. At the same recomputation, tp {best_full['tp']} and pp
{best_full['pp']} is predicted {100 * (published['step'] / best_full['step'] - 1):.0f}% faster. Where the seconds go:"""),
          new_code_cell(BREAKDOWN),
          new_markdown_cell(f"""\
Against tp {best_full['tp']}, pp {best_full['pp']}, the published tp 8, pp 2 spends {d_tp:.2f} s more a step in
tensor-parallel all-reduces (each GPU's share of the GEMMs shrinks with tp; the all-reduced (b, s, h)
activation does not) and {d_comp:.2f} s more computing: the layer norms, dropouts and residual
adds are not split by tensor parallelism, every tp rank does them whole (what sequence
parallelism splits, Korthikanti et al. 2022). The deeper pipeline's bubble costs tp {best_full['tp']}, pp {best_full['pp']}
only {d_bub:.2f} s more, with {best_full['pred'].config['num_microbatches']} micro-batches a step
and 2 chunks a stage.

What the model leaves out, and which way it leans: the all-reduces of later Megatron overlap
with the backward's GEMMs (they would cost tp = 8 less than here), and a deeper pipeline sends
more through the InfiniBand fabric, where many concurrent transfers contend (not modelled).
The honest reading: the search ranks configurations and rules out the ones that do not fit or
are far slower, on a laptop, in seconds; a short real run of the top few is what decides."""),
          new_markdown_cell("""\
## 3. Exercise: the model state of one GPU

Most of what stage 0 holds is not activations but the **model state**: mixed-precision Adam
keeps, per parameter, 2 bytes of fp16 weights, 2 of fp16 gradients and 12 of fp32 optimizer
state (master weights, momentum, variance): 16 bytes (Rajbhandari et al. 2020, ZeRO, section
5.1). Tensor and pipeline parallelism split the parameters; data parallelism copies them,
unless **ZeRO** shards over the dp replicas the optimizer state (stage 1), also the gradients
(stage 2), also the parameters (stage 3).

Write `memory_per_gpu(params, tp, pp, dp, zero_stage)`: the bytes of model state on one GPU.
The checker compares it with mlscale's model (`mlscale.parallel.zero.zero_memory`) on the
ZeRO paper's example and on Table 1's rows, and a wrong answer is told which usual mistake
it matches."""),
          new_code_cell(EXERCISE),
          new_markdown_cell("""\
The reference solution passes the same checks, and against the Meta tracker of the published
configuration it gives the model state that the Meta tracker measured on stage 0, once the
formula is given stage 0's own parameter count (stage 0 holds the embeddings besides its 24
layers, a little more than the even share params / (tp pp)):"""),
          new_code_cell(REFERENCE),
          new_markdown_cell(f"""\
### What ZeRO changes in the plan

`predict` keeps the whole optimizer state on every replica by default, as Megatron-LM did in
2021. `predict(..., zero_stage=1)` shards it over the dp replicas (Rajbhandari et al. 2020):
the Meta device allocates 1/dp of the fp32 master weights, momentum and variance (and of the
step's fp32 gradient copy), its tracker measures the new peak, Adam runs on the shard, and the
dp all-reduce becomes a reduce-scatter of the gradients and an all-gather of the updated
parameters (in the ring model the same bytes and the same time, `mlscale/parallel/zero.py`).
The same search again, at ZeRO stage 1:"""),
          new_code_cell(ZERO),
          new_markdown_cell(f"""\
ZeRO-1 makes {len(new)} more configurations fit ({len(fit1)} in all), and none gets slower:
Adam on 1/dp of the parameters takes 1/dp of the time. The fastest is now
`{ns['label'](b1)}` at {b1['step']:.2f} s a step, MFU {pct(b1)}
({'faster than' if b1['step'] < best['step'] - 1e-9 else 'the same as'} the best without ZeRO,
{best['step']:.2f} s), a configuration that needed {gib(plain[ns['label'](b1)]['memory'])}
without it: sharding the optimizer state buys room, and the room buys a configuration the
plain plan had to refuse.

Stages 2 and 3 shard also the 16-bit gradients and parameters. Here are all four stages for
the best configuration without ZeRO and the best with ZeRO-1 (memory by kind at stage 0's
peak; the step's dp communication, optimizer and bubble):"""),
          new_code_cell(STAGES),
          new_markdown_cell(f"""\
Memory falls stage by stage; time does not. Stage 1 is free (the same bytes, a faster
optimizer). Stage 2 keeps only its shard of the gradients between micro-batches, so it must
reduce-scatter them after **every** micro-batch's backward, {m_b} times a step for
`{ns['label'](best)}`, instead of once: {sb[2].step_time:.2f} s instead of {sb[1].step_time:.2f} s.
Stage 3 also all-gathers each layer's parameters before its forward and again before its
backward, in every micro-batch: {sb[3].step_time:.2f} s. (`predict` puts these collectives on the
critical path, across nodes where the dp group spans nodes; real ZeRO-3/FSDP prefetches the
next unit's parameters and overlaps the reduce-scatters with the backward, which would hide
part of it: `mlscale/parallel/fsdp.py` does so, `predict` does not model it.) So for this run,
3D parallelism plus ZeRO-1 is the plan; stages 2 and 3 are for a model whose state does not
fit otherwise, or a step with few micro-batches.

## Summary

- `mlscale.whatif.predict` runs one tensor-parallel layer of the real code on shape-only
  arrays, plays the pipeline schedule and adds the dp all-reduce: Megatron-LM's Table 1 within
  {100 * abs(worst[2]):.1f}% from 32 to 3,072 GPUs, one number calibrated.
- A planning search over {len(runs)} configurations of a 39B model on 512 GPUs takes seconds:
  {len(fit)} fit in 80 GiB. The best, `{ns['label'](best)}`, is predicted
  {100 * (published['step'] / best['step'] - 1):.0f}% faster than the published configuration: most
  of it by not recomputing where the memory allows, the rest by less tensor parallelism, tp {best['tp']} instead of 8 (fewer
  all-reduces, less unsplit work, for a larger bubble), with the caveats above.
- Model state is 16 B a parameter over tp pp; ZeRO divides by dp what its stage shards.
  Predicted with `predict(..., zero_stage=1)`, ZeRO-1 lets {len(new)} more configurations fit and
  costs no time; stages 2 and 3 save more memory but, with {m_b} micro-batches a step and nothing
  overlapped, cost {100 * (sb[2].step_time / sb[1].step_time - 1):.0f}% and {100 * (sb[3].step_time / sb[1].step_time - 1):.0f}% more time.""")]
    return md


def main():
    ns = numbers()
    cs = cells(ns)
    for i, c in enumerate(cs):  # stable ids: a regenerated notebook diffs only where its text changed
        c.id = f"nb14-{i:02d}"
    nb = new_notebook(cells=cs, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    nbformat.write(nb, PATH)
    print(f"wrote {PATH.relative_to(ROOT)}: {len(nb.cells)} cells")


if __name__ == "__main__":
    main()
