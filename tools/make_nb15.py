"""Write notebooks/15_bridge_to_pytorch.ipynb (the bridge to PyTorch) from this script.

    python tools/make_nb15.py                     # write the notebook (no outputs)
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python tools/execute_notebooks.py 15

Edit the cells here, not in the notebook, then re-execute it. The set-up cell comes from
tools/setup_cell.py, as in every notebook. Cells whose output depends on whether torch is
installed are marked ``# NBVAL_IGNORE_OUTPUT``; the cells nbval compares print only text
that is the same with and without torch, and ASSERT the side-by-side claims where torch is.
"""
from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import setup_cell  # noqa: E402

NAME = "15_bridge_to_pytorch"
PATH = ROOT / "notebooks" / f"{NAME}.ipynb"

CELLS = [
    ("md", f"""# 15 · The bridge to PyTorch: DDP, ZeRO and FSDP2 beside mlscale

[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/mlscale/mlscale/main?urlpath=lab/tree/notebooks/{NAME}.ipynb)
[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mlscale/mlscale/blob/main/notebooks/{NAME}.ipynb)

You have written data parallelism, ZeRO and FSDP with mlscale. Production code uses
PyTorch's versions: `DistributedDataParallel` (DDP), `ZeroRedundancyOptimizer` and FSDP2
(`torch.distributed.fsdp.fully_shard`). This notebook runs the same training both ways, on
the same processes and the same gloo process group, and checks that they agree. This
notebook takes under a minute:

1. **names**: which torch name does what mlscale showed (a table);
2. **the same training, twice**: mlscale's `DataParallel`, `ZeroOptimizer` (ZeRO-1) and
   `FSDP` (ZeRO-3) against DDP, DDP + `ZeroRedundancyOptimizer` and `fully_shard`, in float64:
   the same losses and final parameters to a relative 1e-10;
3. **meshes**: `mp.Mesh` against torch's `DeviceMesh`;
4. **shards**: what each rank keeps under mlscale's FSDP and under FSDP2;
5. **tensor parallelism**: mlscale's Megatron MLP (`ColumnParallelLinear` then
   `RowParallelLinear`) against torch's `parallelize_module` with `ColwiseParallel` /
   `RowwiseParallel` on a `DeviceMesh`, on 2 ranks and on a 2 x 2 dp x tp mesh, then the
   attention heads split over tp (`TPSelfAttention` against ColwiseParallel on q, k, v);
6. **sequence parallelism**: the LayerNorm on sequence shards and the MLP's all-gather /
   reduce-scatter (Megatron SP) against `SequenceParallel` and `input_layouts=Shard(1)` /
   `output_layouts=Shard(1)`.

The torch parts start 2 processes once (`ms.launch(..., backend="torch")`: a gloo group on
CPUs, see `mlscale/comm/torch_dist.py`). Where torch is not installed they print a skip
message and the rest of the notebook still runs: `pip install "mlscale[torch]"` (a CPU build
is enough)."""),
    ("code", setup_cell.cell_source()),
    ("code", """import inspect

import matplotlib.pyplot as plt
import numpy as np

import mlscale as ms
from mlscale import bridge, bridge_attention, bridge_sp, bridge_tp
from mlscale import parallel as mp
from mlscale.data import spirals"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
from importlib.metadata import PackageNotFoundError, version

report = ms.doctor(verbose=False)
try:  # the notebook never imports torch itself: the launched processes do
    torch_here = f"yes (torch {version('torch')})"
except PackageNotFoundError:
    torch_here = 'no: pip install "mlscale[torch]" to run the torch cells'
print("engines in this notebook: sim for mlscale alone, backend='torch' (2 processes, gloo) side by side")
print("real processes here:", "yes" if report.engine_for("processes") == "mpi" else "no",
      "| torch:", torch_here)"""),
    ("md", """## 1. Names

The ideas are the same; the names differ. mlscale passes the communicator `comm` to every
method; torch keeps a default process group and wrappers take a `process_group=` or a
`DeviceMesh`. Each row below is something an earlier notebook built:"""),
    ("code", """w = [max(len(row[i]) for row in bridge.NAME_MAP) for i in range(3)]
print(f"{'what':{w[2]}} | {'mlscale':{w[0]}} | torch")
print("-" * (w[2] + w[0] + w[1] + 6))
for ours, theirs, what in bridge.NAME_MAP:
    print(f"{what:{w[2]}} | {ours:{w[0]}} | {theirs}")"""),
    ("md", """Two differences that matter when you read torch code:

- **Who averages.** mlscale's synchronizers call collectives you can see (`comm.all_reduce`,
  `reduce_scatter`, `all_gather`). DDP and FSDP2 hook into autograd: the all-reduce (DDP) or
  reduce-scatter (FSDP2) of a bucket or a module starts inside `loss.backward()`, as
  mlscale's `DataParallel(overlap=True)` and `FSDP(overlap=True)` start theirs with `comm.start`.
- **How ZeRO-1 shards.** `mp.ZeroOptimizer` cuts the flat parameters into p equal chunks and
  reduce-scatters the gradients. `ZeroRedundancyOptimizer` gives each rank whole parameter
  tensors (balanced by size), leaves the averaging to DDP's all-reduce, and broadcasts each
  rank's updated tensors. The bytes differ, not the result."""),
    ("md", """## 2. The same training, twice

A 2-32-32-3 MLP in float64 on the spirals, a global batch of 32 split over 2 ranks, 20 steps:
SGD with momentum 0.9 for data parallelism, Adam for ZeRO-1 and FSDP. First mlscale alone, on
the simulator (this runs everywhere):"""),
    ("code", """X, y = spirals(n=256, num_classes=3, seed=0)
print(bridge.DEFAULTS)
on_sim = ms.launch(lambda comm: {m: bridge.train_mlscale(comm, m, X, y) for m in bridge.METHODS}, 2)[0]
for m, (losses, params) in on_sim.items():
    print(f"{m:6s} loss at steps 0, 10, 19: {np.round([losses[0], losses[10], losses[19]], 3)}")"""),
    ("md", """This is the torch side: the same model copied into a `torch.nn.Sequential` (torch stores
`nn.Linear`'s weight as (out, in), mlscale as (in, out)), the same batches, and torch's
wrappers built on the communicator's gloo group:"""),
    ("code", """print(inspect.getsource(bridge.train_torch))"""),
    ("md", """Now both, in ONE launch of 2 processes (each start costs seconds): every rank trains each
method with mlscale's classes over `TorchComm` and then with torch's, on the same group.
`bridge.tour` also records the mesh coordinates and the shard sizes for sections 3 and 4, and
runs sections 5 and 6 (their data: `tp_data=(Xt, Yt)`, `attention_data=(Xa, Ya)`, `sp_data=(Xs, Ys)`)."""),
    ("code", """# NBVAL_IGNORE_OUTPUT
Xt, Yt = bridge_tp.tp_data(n=64)  # section 5's regression for the tensor-parallel block
Xa, Ya = bridge_attention.attention_data(n=32)  # and for the attention heads
Xs, Ys = bridge_sp.sp_data(n=32, seq_len=8)  # and section 6's sequences
try:
    tour = ms.launch(bridge.tour, 2, args=(X, y, None, (Xt, Yt), (Xa, Ya), (Xs, Ys)), backend="torch", timeout=300)
except ms.BackendUnavailable as e:
    tour = None
    print(f"skipped (torch or mpiexec missing): {e}")
else:
    diffs = bridge.compare([t["training"] for t in tour])
    for m in bridge.METHODS:
        (ml, _), (tl, _) = tour[0]["training"][m]["mlscale"], tour[0]["training"][m]["torch"]
        print(f"{m:6s} step 19 loss: mlscale {ml[19]:.6f}, torch {tl[19]:.6f};  largest relative "
              f"difference over ranks and steps: losses {diffs[m][0]:.1e}, final params {diffs[m][1]:.1e}")"""),
    ("code", """# the claims, asserted where torch ran (this cell prints the same with torch or without)
print(f"claim: mlscale and torch agree to a relative {bridge.TOLERANCE:g} (float64), every rank, every step; "
      "asserted here wherever torch ran")
if tour is not None:
    for m, (dl, dp) in bridge.compare([t["training"] for t in tour]).items():
        assert dl < bridge.TOLERANCE and dp < bridge.TOLERANCE, (m, dl, dp)
    for m in bridge.METHODS:  # mlscale's code on TorchComm gives what it gave on the simulator, to the bit
        ml, mparams = tour[0]["training"][m]["mlscale"]
        assert ml == on_sim[m][0] and np.array_equal(mparams, on_sim[m][1]), m"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
if tour is None:
    print("skipped: no torch here (the plot shows mlscale's and torch's losses on top of each other)")
else:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for m, c in zip(bridge.METHODS, ("C0", "C1", "C2")):
        ax.plot(tour[0]["training"][m]["mlscale"][0], color=c, lw=2, label=f"mlscale {m}")
        ax.plot(tour[0]["training"][m]["torch"][0], "o", color=c, ms=4, mfc="none", label=f"torch {m}")
    ax.set_xlabel("step"), ax.set_ylabel("rank 0's loss"), ax.legend(ncol=3, fontsize=8)
    ax.set_title("mlscale (lines) and torch (circles), float64, 2 ranks on gloo")
    plt.show()"""),
    ("md", """Why not equal to the bit? The arithmetic is the same (mean gradient, PyTorch's SGD and
Adam formulas, `F.cross_entropy`), but NumPy and torch multiply matrices with different BLAS
kernels, which sum in different orders. In float64 the difference stays near 1e-16 relative
here (float32 rounds at about 1e-7 per operation). ZeRO-1 and FSDP give the same
numbers as each other: sharding changes where the state lives, not what is computed."""),
    ("md", """## 3. Meshes

`mp.Mesh(comm, {"dp": 2, "tp": 2})` and `init_device_mesh("cpu", (2, 2),
mesh_dim_names=("dp", "tp"))` lay the ranks out the same way: row-major, the LAST dim fastest,
so tensor-parallel neighbours are adjacent ranks (one node). `mesh["tp"]` is a sub-communicator
in mlscale, a 1-D `DeviceMesh` in torch (`mesh["tp"].get_group()` is its process group)."""),
    ("code", """print(mp.describe_mesh({"dp": 2, "tp": 2}))
print("torch: init_device_mesh('cpu', (2, 2), mesh_dim_names=('dp', 'tp')).mesh ->",
      np.arange(4).reshape(2, 2).tolist())"""),
    ("code", """# on the 2-process launch above, each rank's coordinates from both (asserted where torch ran)
print("claim: mp.Mesh(comm, {'dp': 1, 'tp': 2}).coords == {d: device_mesh[d].get_local_rank()} on every rank; "
      "asserted here wherever torch ran")
if tour is not None:
    for r, t in enumerate(tour):
        ours, theirs = t["mesh"]
        assert ours == theirs == {"dp": 0, "tp": r}, (r, ours, theirs)"""),
    ("md", """## 4. What each rank keeps

Both shard ZeRO-3 style, but they cut differently. mlscale's `FSDP` flattens each unit (here
one layer: weight and bias) and gives rank r chunk r of it (`np.array_split`). FSDP2 keeps each
parameter a `DTensor` sharded on dim 0 (`Shard(0)`): rows of the (out, in) weight, ceil(rows/p)
per rank, the last rank's chunk shorter (padded for the collectives)."""),
    ("code", """sizes = bridge.DEFAULTS["sizes"]
ours = ms.launch(lambda comm: bridge.fsdp_shard_numels(comm, sizes), 2)  # mlscale's FSDP on the simulator
fsdp2 = [bridge.fsdp2_shard_numels(sizes, 2, r) for r in range(2)]      # FSDP2's rule
for r in range(2):
    print(f"rank {r}: mlscale FSDP keeps {ours[r]} elements per layer; FSDP2 (Shard(0) rows) keeps {fsdp2[r]}")"""),
    ("code", """# torch's own numbers, from the launch (asserted equal to the rows rule above)
print("claim: FSDP2's p.to_local().numel() per layer follows the Shard(0) rule, mlscale's the flat chunks; "
      "asserted here wherever torch ran")
if tour is not None:
    for r, t in enumerate(tour):
        assert t["shards"] == {"mlscale": ours[r], "torch": fsdp2[r]}, (r, t["shards"])"""),
    ("md", """The last layer has 3 output rows: FSDP2 gives rank 0 two rows and rank 1 one, mlscale
splits its 99 elements 50/49. For large layers the two are the same to a row; dim-0 shards
let torch keep each parameter a tensor of its own (a `DTensor`) that other parallelisms
(tensor parallel on a second mesh dim) shard again.

**Buckets.** mlscale's `DataParallel(bucket_bytes=...)` is DDP's `bucket_cap_mb`: both group
gradients from the LAST parameter backwards, so the first bucket is ready while backward
still runs. DDP also caps its first bucket at 1 MiB, and rebuilds its buckets after the
first step in the order the gradients really arrived. The buckets of this model at 2 KiB:"""),
    ("code", """model = ms.nn.MLP(bridge.DEFAULTS["sizes"], seed=0, dtype=np.float64)
for b in model.buckets(bridge.DEFAULTS["bucket_bytes"]):
    print(f"bucket {b.index}: {b.nbytes:5d} B  {list(b.names)}")
print(f"torch: DDP(model, bucket_cap_mb={bridge.DEFAULTS['bucket_bytes'] / 2**20:.6f})")"""),
    ("md", """## 5. Tensor parallelism: the Megatron MLP beside `ColwiseParallel` / `RowwiseParallel`

Notebook 09 split one MLP block `Z = GELU(X W1 + b1) W2 + b2` over a tensor-parallel group
(Shoeybi et al. 2019): W1 by its output columns (`ColumnParallelLinear`), W2 by its input
rows (`RowParallelLinear`), so the hidden activations never travel. Torch does the same with
`parallelize_module(mlp, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})`,
which turns each parameter into a `DTensor` sharded over the `DeviceMesh`. Both shard W1 by
output columns and W2 by input rows; only the storage differs. mlscale keeps a weight as
(in, out), torch's `nn.Linear.weight` is (out, in), so a column of W is a row of torch's
weight and torch's `Shard(0)` of `0.weight` is mlscale's `W1[:, cols_r]` transposed:

| parameter | mlscale, rank r (W is (in, out)) | torch, rank r (`weight` is (out, in)) |
|---|---|---|
| W1 (d, h) | `fc1.weight = W1[:, cols_r]`, (d, h/t) | `0.weight`: `Shard(0)`, (h/t, d) = its transpose |
| b1 (h,) | `fc1.bias = b1[cols_r]` | `0.bias`: `Shard(0)`, the same slice |
| W2 (h, d) | `fc2.weight = W2[rows_r, :]`, (h/t, d) | `2.weight`: `Shard(1)`, (d, h/t) = its transpose |
| b2 (d,) | `fc2.bias`, whole on every rank | `2.bias`: `Replicate()` |

The names, side by side:"""),
    ("code", """w = [max(len(row[i]) for row in bridge_tp.TP_NAME_MAP) for i in range(3)]
print(f"{'what':{w[2]}} | {'mlscale':{w[0]}} | torch")
print("-" * (w[2] + w[0] + w[1] + 6))
for ours, theirs, what in bridge_tp.TP_NAME_MAP:
    print(f"{what:{w[2]}} | {ours:{w[0]}} | {theirs}")"""),
    ("md", """**f and g.** Megatron's two operators are the block's only communication, in both libraries:

- **g**, after the row-parallel layer: each rank holds a partial sum `h_r W2[rows_r]`; an
  all-reduce of a (batch, d) array completes Z in forward (backward: nothing). In torch,
  RowwiseParallel's output is a `Partial` DTensor redistributed to `Replicate` (an all-reduce).
- **f**, before the column-parallel layer: X is the same on every rank (forward: nothing);
  in backward each rank has only its part of dX = dY_r W1[:, cols_r]^T, and an all-reduce sums
  it. In torch, ColwiseParallel's input is `Replicate`, so its gradient comes back `Partial`
  and is all-reduced.

Both cut a dim of h the same way here (h = 16 over t = 2: 8 columns each). In general mlscale
cuts as `np.array_split` (the first ranks one larger) and torch's `Shard` as `torch.chunk`
(ceil(h/t) each, the last shorter): 10 over 4 is 3, 3, 2, 2 in mlscale and 3, 3, 3, 1 in torch.
The bridge refuses such sizes rather than compare shards that differ.

First mlscale alone, on the simulator: a 6-16-6 block in float64 on a regression
(`F.mse_loss`), a global batch of 16, 6 steps, once with SGD (momentum 0.9) and once with Adam:"""),
    ("code", """print(bridge_tp.TP_DEFAULTS)
print("mlscale cuts h=10 over 4:", mp.shard_sizes(10, 4), "| torch.chunk:", bridge_tp.torch_chunk_sizes(10, 4))
tp_sim = {o: ms.launch(lambda comm: bridge_tp.tp_train_mlscale(comm, Xt, Yt, optimizer=o), 2)
          for o in bridge_tp.TP_OPTIMIZERS}
for o, res in tp_sim.items():
    print(f"{o:4s} loss at steps 0..5: {np.round(res[0]['losses'], 4)}")
for k, v in tp_sim["adam"][0]["shards"].items():
    print(f"rank 0 keeps {k:10s} {str(v.shape):8s} (torch {bridge_tp.TP_NAMES[k]}: "
          f"{v.T.shape if k.endswith('weight') else v.shape})")"""),
    ("md", """The torch side copies the same single-device block into `nn.Sequential(Linear, GELU, Linear)`,
builds the mesh, parallelizes the two Linears and trains with torch's optimizer:"""),
    ("code", """print(inspect.getsource(bridge_tp.tp_train_torch).split("    shards, placements")[0])"""),
    ("md", """Both ran in the launch of section 2 (2 processes, tp = 2). What torch keeps on each rank
(`param.placements` and `param.to_local().shape`), and how far apart the two libraries are:"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
if tour is None:
    print("skipped (torch or mpiexec missing): the tensor-parallel comparison needs the launch of section 2")
else:
    for name, (placements, shape) in tour[0]["tp"]["adam"]["torch"]["placements"].items():
        print(f"torch rank 0 {name:8s} placements {placements}, local shape {shape}")
    for o, d in bridge_tp.tp_compare([t["tp"] for t in tour]).items():
        print(f"{o:4s} largest relative difference: losses {d['losses']:.1e}, gathered params {d['params']:.1e}, "
              f"per-rank shards {d['shards']:.1e}")"""),
    ("code", """# the claims, asserted where torch ran (this cell prints the same with torch or without)
print(f"claim: on tp = 2, mlscale's ParallelMLP and torch's ColwiseParallel / RowwiseParallel agree to < "
      f"{bridge.TOLERANCE:g} relative (losses, gathered weights, each rank's shards); asserted wherever torch ran")
if tour is not None:
    for o, d in bridge_tp.tp_compare([t["tp"] for t in tour]).items():
        assert max(d.values()) < bridge.TOLERANCE, (o, d)
    h, d = bridge_tp.TP_DEFAULTS["d_hidden"], bridge_tp.TP_DEFAULTS["d_model"]
    for r, t in enumerate(tour):
        assert t["tp"]["adam"]["torch"]["placements"] == {
            "0.weight": (("Shard(dim=0)",), (h // 2, d)), "0.bias": (("Shard(dim=0)",), (h // 2,)),
            "2.weight": (("Shard(dim=1)",), (d, h // 2)), "2.bias": (("Replicate()",), (d,))}, r
        for o in bridge_tp.TP_OPTIMIZERS:  # mlscale's code on TorchComm = on the simulator, to the bit
            assert t["tp"][o]["mlscale"]["losses"] == tp_sim[o][r]["losses"], (o, r)"""),
    ("md", """### dp x tp on a 2 x 2 mesh

With 4 ranks, `mp.Mesh(comm, {"dp": 2, "tp": 2})` and `init_device_mesh("cpu", (2, 2),
mesh_dim_names=("dp", "tp"))` put tp neighbours on adjacent ranks (section 3). The block is
tensor-parallel over `mesh["tp"]`; each dp row reads its half of the global batch. mlscale
averages each shard's gradient over `mesh["dp"]` (an all-reduce); torch's recipe is
`fully_shard(net, mesh=mesh["dp"])` after `parallelize_module` (FSDP2 on dp: the weights are
cut again over dp, `(Shard(0), Shard(1))` for `2.weight`). The same mean gradient, so the
same training. One more launch, of 4 processes:"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
try:
    tp2d = ms.launch(bridge_tp.tp_side_by_side, 4, args=(Xt, Yt, {"dp": 2, "tp": 2}), backend="torch", timeout=300)
except ms.BackendUnavailable as e:
    tp2d = None
    print(f"skipped (torch or mpiexec missing): {e}")
else:
    print("torch rank 0 2.weight placements (dp, tp):", tp2d[0]["adam"]["torch"]["placements"]["2.weight"])
    for o, d in bridge_tp.tp_compare(tp2d).items():
        print(f"{o:4s} largest relative difference: losses {d['losses']:.1e}, gathered params {d['params']:.1e}, "
              f"per-rank tp shards {d['shards']:.1e}")"""),
    ("code", """print("claim: on a 2 x 2 dp x tp mesh, mlscale (TP + dp all-reduce) and torch (TP + FSDP2 on dp) agree to < "
      f"{bridge.TOLERANCE:g} relative, every rank; ranks with the same tp coordinate hold the same shard; "
      "asserted wherever torch ran")
if tp2d is not None:
    for o, d in bridge_tp.tp_compare(tp2d).items():
        assert max(d.values()) < bridge.TOLERANCE, (o, d)
    for k in bridge_tp.TP_NAMES:
        for side in ("mlscale", "torch"):
            assert np.array_equal(tp2d[0]["adam"][side]["shards"][k], tp2d[2]["adam"][side]["shards"][k]), (side, k)"""),
    ("md", """### Attention heads over tp

Heads are independent, so tensor-parallel attention gives each rank whole heads: the
projection to Q, K and V is column-parallel (my heads' columns), attention runs on my heads
with no communication, and the output projection is row-parallel (g: one all-reduce).
mlscale's `TPSelfAttention` keeps ONE fused `qkv` weight (d, 3d) and picks, from each of its
Q, K and V thirds, the columns of my heads (`mp.shard_block_state`). Torch's ColwiseParallel
cuts a weight into t contiguous blocks of rows, which on a fused (3d, d) weight would give
rank 0 all of Q and half of K; so torch code keeps separate `q`, `k`, `v` Linears, each
ColwiseParallel, and the output Linear `o` RowwiseParallel:

| parameter | mlscale, rank r (fused, (in, out)) | torch, rank r (`weight` (out, in)) |
|---|---|---|
| W_q, W_k, W_v | `qkv.weight = [Wq[:, cols_r] \\| Wk[:, cols_r] \\| Wv[:, cols_r]]`, (d, 3d/t) | `q.weight`, `k.weight`, `v.weight`: `Shard(0)`, (d/t, d) each |
| W_o (d, d) | `proj.weight = Wo[cols_r, :]`, (d/t, d) | `o.weight`: `Shard(1)`, (d, d/t) |
| b_o | whole on every rank | `o.bias`: `Replicate()` |

`cols_r` are the dims of my heads: with 4 heads of 2 dims on 2 ranks, rank 0 has heads 0 and 1,
dims 0..3. Torch's module views its local q as `(b, s, -1, head_dim)`, so it counts its local
heads itself. Trained with SGD (momentum 0.9), 5 steps, causal attention, float64:"""),
    ("code", """print(bridge_attention.ATTN_DEFAULTS)
attn_sim = ms.launch(lambda comm: bridge_attention.attention_train_mlscale(comm, Xa, Ya), 2)
print(f"mlscale on the simulator, loss at steps 0..4: {np.round(attn_sim[0]['losses'], 4)}")
for k, v in attn_sim[0]["shards"].items():
    print(f"rank 0 keeps {k:11s} {v.shape}")"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
if tour is None:
    print("skipped (torch or mpiexec missing): the attention comparison needs the launch of section 2")
else:
    for name, (placements, shape) in tour[0]["attention"]["torch"]["placements"].items():
        print(f"torch rank 0 {name:8s} placements {placements}, local shape {shape}")
    d = bridge_attention.attention_compare([t["attention"] for t in tour])
    print(f"largest relative difference: losses {d['losses']:.1e}, gathered params {d['params']:.1e}, "
          f"per-rank shards {d['shards']:.1e}")"""),
    ("code", """print(f"claim: TPSelfAttention and torch's ColwiseParallel (q, k, v) / RowwiseParallel (o) agree to < "
      f"{bridge.TOLERANCE:g} relative (losses, gathered weights, each rank's shards); asserted wherever torch ran")
if tour is not None:
    d = bridge_attention.attention_compare([t["attention"] for t in tour])
    assert max(d.values()) < bridge.TOLERANCE, d
    for r, t in enumerate(tour):
        assert t["attention"]["mlscale"]["losses"] == attn_sim[r]["losses"], r"""),
    ("md", """Why SGD here and not Adam? The key bias `b_k` adds `q . b_k` to a whole row of
attention scores, which softmax ignores: its gradient is zero, and each library computes
rounding noise of about 1e-17 there instead, each its own. Adam divides a gradient by its own
running size, so it turns that noise into steps of about `lr g / (|g| + eps)` ~ 1e-11: after
5 steps the two libraries differ by some 1e-11 in `b_k` alone, every other parameter still
near 1e-16. A property of Adam on a parameter that does nothing, not a difference in the math
(`bridge_attention.attention_train_mlscale(..., optimizer="adam")` shows it)."""),
    ("md", """## 6. Sequence parallelism: the norm on sequence shards beside `SequenceParallel`

Tensor parallelism leaves the LayerNorm (and dropout, and the residual adds) replicated: every
rank of tp stores the same (batch, seq, d) activations there. Those work on each token alone,
so Megatron's sequence parallelism (Korthikanti et al. 2022, notebook 09) splits them along
the SEQUENCE: rank r keeps tokens `[r s/t, (r+1) s/t)`. Where that region meets the MLP, each
all-reduce of plain TP becomes its two halves: an all-gather along the sequence before the
column-parallel fc1 (it needs every token), a reduce-scatter after the row-parallel fc2 (sum
the partial outputs, keep my tokens). The block here is the MLP half of a pre-norm transformer
block, `Z = X + GELU(LN(X) W1 + b1) W2 + b2`. Torch writes it as

```python
parallelize_module(block, mesh["tp"], {"norm": SequenceParallel(),
                                       "fc1": ColwiseParallel(input_layouts=Shard(1)),
                                       "fc2": RowwiseParallel(output_layouts=Shard(1))})
```

`Shard(1)` says "sharded on dim 1", the sequence of (batch, seq, d). The collectives of one
training step, in each library:

| where | mlscale (`TPFeedForward(sequence_parallel=True)`) | torch (DTensor redistributions) |
|---|---|---|
| before fc1 | `GatherFromSP`: all-gather | input `Shard(1) -> Replicate`: all-gather |
| after fc2 | `ReduceScatterToSP`: reduce-scatter | output `Partial -> Shard(1)`: reduce-scatter |
| backward of fc2's output | all-gather of dZ | `Shard(1) -> Replicate`: all-gather |
| backward of fc1's input | reduce-scatter of the partial dX | `Partial -> Shard(1)`: reduce-scatter |
| norm's weight and bias grads | partial sums over my tokens, one all-reduce (with fc2's bias) | `Partial(sum)` DTensors, all-reduced inside `optimizer.step()` |

The names, side by side:"""),
    ("code", """w = [max(len(row[i]) for row in bridge_sp.SP_NAME_MAP) for i in range(3)]
print(f"{'what':{w[2]}} | {'mlscale':{w[0]}} | torch")
print("-" * (w[2] + w[0] + w[1] + 6))
for ours, theirs, what in bridge_sp.SP_NAME_MAP:
    print(f"{what:{w[2]}} | {ours:{w[0]}} | {theirs}")"""),
    ("md", """First mlscale alone, on the simulator: d = 6, h = 16, sequences of 8 tokens, a batch of 4,
5 SGD steps (momentum 0.9), float64, on 2 ranks. Each rank reads its 4 tokens of every
sequence; the trace's bytes are the ring formula (`bridge_sp.sp_step_bytes`): per step
2 (t-1) n itemsize for the two all-gathers and as much for the two reduce-scatters, n = b s d,
the bytes of plain TP's two all-reduces:"""),
    ("code", """print(bridge_sp.SP_DEFAULTS)
sp_sim = ms.launch(lambda comm: bridge_sp.sp_train_mlscale(comm, Xs, Ys), 2)
print(f"loss at steps 0..4: {np.round(sp_sim[0]['losses'], 4)}")
for r, out in enumerate(sp_sim):
    print(f"rank {r} holds sequence positions {out['positions']}, its output activation {out['activation'].shape}")
c = bridge_sp.SP_DEFAULTS
per_step = bridge_sp.sp_step_bytes(2, c["batch_size"], Xs.shape[1], c["d_model"])
tr = sp_sim.trace
for kind in ("all_gather", "reduce_scatter", "all_reduce"):
    print(f"{kind:14s} trace {tr.bytes_sent(label=kind):6d} B, formula {c['steps']} x {per_step[kind]} B per step")
assert tr.bytes_sent(label="reduce_scatter") == c["steps"] * per_step["reduce_scatter"]
assert tr.bytes_sent(label="all_reduce") == c["steps"] * per_step["all_reduce"]
print("(all_gather also holds the final gather of the weights for the comparison:",
      tr.bytes_sent(label="all_gather") - c["steps"] * per_step["all_gather"], "B)")"""),
    ("md", """Both ran in the launch of section 2. What torch keeps and counts on each rank: the sequence
positions its `Shard(1)` gives the rank (`distribute_tensor(arange(s), mesh, [Shard(1)])`), the
parameters' placements, the gradients' placements after `backward()`, and the collectives of
the first step (torch's `CommDebugMode`):"""),
    ("code", """# NBVAL_IGNORE_OUTPUT
if tour is None:
    print("skipped (torch or mpiexec missing): the sequence-parallel comparison needs the launch of section 2")
else:
    for r, t in enumerate(tour):
        print(f"rank {r}: torch Shard(1) positions {t['sp']['torch']['positions']}, "
              f"mlscale {t['sp']['mlscale']['positions']}")
    t0 = tour[0]["sp"]["torch"]
    for name, (placements, shape) in t0["placements"].items():
        print(f"torch rank 0 {name:11s} placements {placements}, local shape {shape}, "
              f"grad {t0['grad_placements'][name]}")
    print("torch's collectives in step 0:", t0["comms"])
    print("mlscale's calls over the 5 steps:",
          {f"{ph} {k}": n for (ph, k), (n, _) in tour[0]["sp"]["mlscale"]["kinds"].items()})
    d = bridge_sp.sp_compare([t["sp"] for t in tour])
    print(f"largest relative difference: losses {d['losses']:.1e}, gathered params {d['params']:.1e}, "
          f"per-rank shards {d['shards']:.1e}, per-rank activations {d['activations']:.1e}")"""),
    ("code", """print("claim: mlscale's SP block and torch's SequenceParallel / Shard(1) plan agree to < "
      f"{bridge.TOLERANCE:g} relative (losses, gathered weights, each rank's shards and output activations); both give rank r the "
      "contiguous tokens [r s/t, (r+1) s/t); one all-gather and one reduce-scatter each way per step; "
      "asserted wherever torch ran")
if tour is not None:
    d = bridge_sp.sp_compare([t["sp"] for t in tour])
    assert max(d.values()) < bridge.TOLERANCE, d
    s = Xs.shape[1]
    one = {"all_gather_into_tensor": 1, "reduce_scatter_tensor": 1}
    for r, t in enumerate(tour):
        mine = list(range(r * s // 2, (r + 1) * s // 2))
        assert t["sp"]["torch"]["positions"] == t["sp"]["mlscale"]["positions"] == mine, r
        assert t["sp"]["torch"]["comms"] == {"forward": one, "backward": one, "step": {"all_reduce": 2}}, r
        assert t["sp"]["mlscale"]["losses"] == sp_sim[r]["losses"], r  # TorchComm = the simulator, to the bit"""),
    ("md", """Three differences in where the work sits, none in the result:

- **The norm's gradients.** Each rank's LayerNorm sees only its tokens, so its weight and
  bias gradients are partial sums. mlscale all-reduces them explicitly after backward
  (`sync_grads`, Megatron's `allreduce_sequence_parallel_grads`); torch marks them
  `Partial(sum)` and the all-reduce happens when `optimizer.step()` reads them.
- **fc2's bias.** mlscale adds it after the reduce-scatter, on my tokens, so its gradient is
  partial too (summed with the norm's); torch computes it from the all-gathered dZ, every
  token on every rank, and needs no collective for it.
- **fc1's input in backward.** Torch's autograd keeps the all-gathered input of fc1 for its
  weight gradient (mlscale's `regather=False`, used here); Megatron, and mlscale's default in
  `TPBlock`, keeps only my tokens and all-gathers them again in backward: one more
  all-gather per step, (t-1)/t of a (b, s, d) activation less memory per rank."""),
    ("md", """## Running it as torch does

The same program runs under torchrun, which is how torch jobs start on one machine or many
(`ms.comm.TorchComm()` joins the default group that torchrun's environment describes):

```python
# torchrun --nproc-per-node 2 train.py
import mlscale as ms
from mlscale import bridge
from mlscale.data import spirals
comm = ms.comm.TorchComm()
X, y = spirals(n=256, num_classes=3, seed=0)
losses, params = bridge.train_torch(comm, "fsdp", X, y)
```

How fast is gloo? `mlscale bench allreduce` times gloo's `all_reduce` beside MPI's and
mlscale's ring on both engines in one run; the figures are in `docs/benchmarks.md`.

## Summary

- mlscale's `DataParallel`, `ZeroOptimizer` and `FSDP` compute what DDP,
  `ZeroRedundancyOptimizer` and FSDP2 compute: the same losses and parameters to 1e-10 in
  float64, on the same gloo group.
- The names map one to one: `comm` ↔ process group, `mp.Mesh` ↔ `DeviceMesh`,
  `bucket_bytes` ↔ `bucket_cap_mb`, FSDP units ↔ `fully_shard` per module,
  `MixedPrecisionPolicy` ↔ `MixedPrecisionPolicy`.
- They differ in where the work is hidden (autograd hooks in torch, visible collectives in
  mlscale) and in how they cut: whole tensors (ZeRO-1), dim-0 rows (FSDP2) against flat chunks.
- Tensor parallelism is one to one too: `ColumnParallelLinear` ↔ `ColwiseParallel`,
  `RowParallelLinear` ↔ `RowwiseParallel`, `Mesh["tp"]` ↔ `DeviceMesh["tp"]`, Megatron's g (the
  row-parallel output all-reduce) and f (the column-parallel input-gradient all-reduce) ↔
  DTensor's `Partial -> Replicate`; each rank holds the same shard in both, transposed
  because `nn.Linear` stores (out, in). Attention heads split the same way: mlscale's fused
  `qkv` by whole heads ↔ ColwiseParallel on separate `q`, `k`, `v`, `proj` ↔ RowwiseParallel `o`.
- Sequence parallelism too: the norm on my tokens ↔ `SequenceParallel()`, `GatherFromSP` ↔
  `ColwiseParallel(input_layouts=Shard(1))`, `ReduceScatterToSP` ↔
  `RowwiseParallel(output_layouts=Shard(1))`; both give rank r the contiguous tokens
  `[r s/t, (r+1) s/t)` and run the same all-gathers and reduce-scatters; the norm's partial
  gradients are reduced explicitly (mlscale) or by `optimizer.step()` on `Partial` DTensors (torch)."""),
]


def build():
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    return nb


def main():
    nb = build()
    nbformat.validate(nb)
    nbformat.write(nb, PATH)
    print(f"wrote {PATH.relative_to(ROOT)} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
