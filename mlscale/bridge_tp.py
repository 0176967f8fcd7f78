"""The bridge to PyTorch, tensor parallelism: mlscale's Megatron MLP (``ParallelMLP``:
``ColumnParallelLinear`` then ``RowParallelLinear``) next to torch's
``parallelize_module(net, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})``,
the same training on the same gloo processes, float64 (Shoeybi et al. 2019, section 3).

    ms.launch(bridge_tp.tp_side_by_side, 2, args=(X, Y), backend="torch")                # tp = 2
    ms.launch(bridge_tp.tp_side_by_side, 4, args=(X, Y), kwargs... mesh_sizes={"dp": 2, "tp": 2})

The block is ``Z = GELU(X W1 + b1) W2 + b2`` (GELU's tanh form on both sides), trained on
a regression with torch's ``F.mse_loss`` (the mean of ``(Z - Y)^2`` over every element).
Both libraries start from ONE single-device ``nn.MLP([d, h, d], "gelu")``; each rank keeps:

================  ==========================================  ==========================================
parameter         mlscale (W stored (in, out))                torch (``nn.Linear.weight`` is (out, in))
================  ==========================================  ==========================================
W1 (d, h)         ``fc1.weight = W1[:, cols_r]`` (d, h/t)     ``0.weight``: ``Shard(0)`` rows of W1^T,
                  ColumnParallelLinear: my output columns     (h/t, d): ColwiseParallel, the same columns
b1 (h,)           ``fc1.bias = b1[cols_r]``                   ``0.bias``: ``Shard(0)``, the same slice
W2 (h, d)         ``fc2.weight = W2[rows_r, :]`` (h/t, d)     ``2.weight``: ``Shard(1)`` columns of W2^T,
                  RowParallelLinear: my input rows            (d, h/t): RowwiseParallel, the same rows
b2 (d,)           ``fc2.bias``: whole on every rank           ``2.bias``: ``Replicate()``
================  ==========================================  ==========================================

so rank r's shard in torch is rank r's shard in mlscale, transposed: ``tp_shards`` returns
both in mlscale's (in, out) layout and the tests compare them. mlscale cuts a dim as
``np.array_split`` (the first ranks one larger), torch's ``Shard`` as ``torch.chunk``
(ceil(h/t) each, the last shorter): the same cut for t = 2 or t dividing h, otherwise a
ValueError says so.

The communication is Megatron's f and g on both sides: g, the all-reduce of the
row-parallel layer's partial outputs in forward (torch: the ``Partial -> Replicate``
redistribution of RowwiseParallel's output); f, the all-reduce of the column-parallel
layer's partial input gradients in backward (torch: ColwiseParallel's replicated input
becoming a ``Partial`` gradient, reduced at the block's input). On a 2-D mesh
``{"dp": 2, "tp": 2}`` mlscale averages each shard's gradient over ``mesh["dp"]`` (an
all-reduce, ZeRO-0); torch's recipe applies ``fully_shard(net, mesh=mesh["dp"])`` (FSDP2
over dp: reduce-scatter, all-gather): the same mean gradient, so the same training.

Agreement is to rounding, not to the bit (different BLAS kernels, summation orders):
``bridge.TOLERANCE`` (1e-10 relative) on the losses, the gathered parameters and every shard.
Needs torch; importing this module does not import it.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from .bridge import _my_batches, _world_group, flat_params, rel_diff, torch_mlp
from .comm.torch_dist import _torch
from .nn import MLP
from .nn.optim import SGD, Adam
from .parallel.mesh import Mesh
from .parallel.tensor import ParallelMLP
from .parallel.tp_comm import GatherFromTP, shard_sizes

TP_OPTIMIZERS = ("sgd", "adam")
#: the tensor-parallel training both libraries run (tiny: seconds, even on 4 processes)
TP_DEFAULTS = dict(d_model=6, d_hidden=16, steps=6, batch_size=16, optimizer="adam", sgd_lr=0.1, momentum=0.9,
                   adam_lr=1e-2, seed=0)
#: mlscale's names of the block's parameters <-> torch's (nn.Sequential positions)
TP_NAMES = {"fc1.weight": "0.weight", "fc1.bias": "0.bias", "fc2.weight": "2.weight", "fc2.bias": "2.bias"}


def tp_data(n=64, d_model=TP_DEFAULTS["d_model"], seed=0):
    """A regression for the block: X (n, d) standard normal, Y = sin(X M / sqrt(d)), float64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_model))
    return X, np.sin(X @ rng.standard_normal((d_model, d_model)) / np.sqrt(d_model))


def torch_chunk_sizes(n, parts):
    """The sizes ``torch.chunk`` (DTensor's ``Shard``) cuts n into over ``parts`` ranks:
    ceil(n / parts) each, the last ones shorter or empty."""
    step = -(-int(n) // int(parts))
    return [max(0, min(step, n - r * step)) for r in range(parts)]


def _tp_config(kw, mesh_sizes, world_size):
    unknown = set(kw) - set(TP_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; the TP bridge takes {sorted(TP_DEFAULTS)}")
    c = {**TP_DEFAULTS, **kw}
    if c["optimizer"] not in TP_OPTIMIZERS:
        raise ValueError(f"optimizer={c['optimizer']!r}: use one of {TP_OPTIMIZERS}")
    sizes = dict(mesh_sizes or {"dp": 1, "tp": world_size})
    if list(sizes) != ["dp", "tp"]:
        raise ValueError(f"mesh_sizes={sizes}: the TP bridge takes {{'dp': n, 'tp': t}} (dp slowest, as "
                         "init_device_mesh('cpu', (n, t), mesh_dim_names=('dp', 'tp')))")
    t = sizes["tp"]
    if shard_sizes(c["d_hidden"], t) != torch_chunk_sizes(c["d_hidden"], t):
        raise ValueError(f"d_hidden={c['d_hidden']} over tp={t}: mlscale cuts it {shard_sizes(c['d_hidden'], t)} "
                         f"(np.array_split), torch {torch_chunk_sizes(c['d_hidden'], t)} (torch.chunk), so the "
                         f"ranks' shards would differ; use a d_hidden divisible by {t}")
    return c, sizes


def _full_model(c):
    """The single-device block both libraries start from: nn.MLP([d, h, d], "gelu")."""
    return MLP([c["d_model"], c["d_hidden"], c["d_model"]], activation="gelu", seed=c["seed"], dtype=np.float64)


def _mse(z, y):
    """torch's ``F.mse_loss``: ``mean((z - y)^2)`` over every element, and d/dz = 2 (z - y) / z.size."""
    diff = z - y
    return float(np.mean(diff * diff)), 2.0 * diff / diff.size


def tp_train_mlscale(comm, X, Y, mesh_sizes=None, **kw):
    """mlscale's side on this rank: ``{"losses", "params", "shards"}``. A ``Mesh(comm,
    {"dp": n, "tp": t})``; a ``ParallelMLP`` on ``mesh["tp"]`` from the full block's values;
    each dp group reads its slice of the global batch; gradients averaged over
    ``mesh["dp"]`` (ring all-reduce) when n > 1; one SGD or Adam per shard (both are
    elementwise, so sharded = whole). ``params``: the gathered block in ``nn.MLP``'s flat
    layout; ``shards``: this rank's ``{"fc1.weight": ..., ...}`` after training."""
    c, sizes = _tp_config(kw, mesh_sizes, comm.world_size)
    mesh = Mesh(comm, sizes)
    tp, dp = mesh["tp"], mesh["dp"]
    full = _full_model(c)
    start = full.named_params()
    block = ParallelMLP(tp, c["d_model"], c["d_hidden"], "gelu", start["0.weight"], start["0.bias"],
                        start["2.weight"], start["2.bias"], dtype=np.float64)
    params, grads = block.named_params(), block.named_grads()
    opts = {k: _optimizer(c, p) for k, p in params.items()}
    losses = []
    for xb, yb in _my_batches(dp, X, Y, c["steps"], c["batch_size"], c["seed"]):
        block.zero_grad()
        loss, dz = _mse(block.forward(xb), yb)
        block.backward(dz)
        losses.append(loss)
        for k, g in grads.items():
            if dp.world_size > 1:
                g[...] = dp.all_reduce(g, op="mean", algorithm="ring")
            opts[k].step(g.reshape(-1))
    return {"losses": losses, "params": _gathered(tp, block, full),
            "shards": {k: np.array(v) for k, v in params.items()}}


def _optimizer(c, p):
    flat = p.reshape(-1)
    assert np.shares_memory(flat, p)  # the optimizer steps the shard in place
    if c["optimizer"] == "sgd":
        return SGD(flat, lr=c["sgd_lr"], momentum=c["momentum"])
    return Adam(flat, lr=c["adam_lr"])


def _gathered(tp, block, full):
    """The whole block from the tp shards (all-gathers over ``tp``), flat as ``full.params``."""
    h = block.fc1.out_features
    w1 = GatherFromTP(tp, h).forward(block.fc1.params["weight"])                    # (d, h)
    b1 = GatherFromTP(tp, h).forward(block.fc1.params["bias"][None, :])[0]          # (h,)
    w2 = GatherFromTP(tp, h).forward(np.ascontiguousarray(block.fc2.params["weight"].T)).T  # (h, d)
    values = {"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": block.fc2.params["bias"]}
    out = np.empty(full.num_params)
    for s in full.slots:
        out[s.start:s.stop] = np.asarray(values[f"{s.layer}.{s.key}"]).reshape(-1)
    return out


def tp_train_torch(comm, X, Y, mesh_sizes=None, **kw):
    """torch's side on this rank, the same as ``tp_train_mlscale``: the full block copied
    into ``nn.Sequential(Linear, GELU("tanh"), Linear)``, ``init_device_mesh("cpu", (n, t),
    mesh_dim_names=("dp", "tp"))``, ``parallelize_module`` with ColwiseParallel on "0" and
    RowwiseParallel on "2" over ``mesh["tp"]``, and ``fully_shard(net, mesh=mesh["dp"])``
    when n > 1 (torch's 2-D recipe); ``torch.optim.SGD`` or ``Adam``, ``F.mse_loss``.
    ``shards``: each parameter's tp shard (``to_local()``, after gathering the dp shards of
    FSDP2 by a redistribute), transposed to mlscale's (in, out) layout; ``placements``:
    ``{"0.weight": (placements, local shape), ...}`` as torch keeps them."""
    torch, _ = _torch()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    c, sizes = _tp_config(kw, mesh_sizes, comm.world_size)
    _world_group(comm)
    full = _full_model(c)
    net = torch_mlp(full)
    mesh = init_device_mesh("cpu", (sizes["dp"], sizes["tp"]), mesh_dim_names=("dp", "tp"))
    parallelize_module(net, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    if sizes["dp"] > 1:
        fully_shard(net, mesh=mesh["dp"])
    if c["optimizer"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=c["sgd_lr"], momentum=c["momentum"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=c["adam_lr"])
    dp_rank = mesh["dp"].get_local_rank()
    dp = SimpleNamespace(rank=dp_rank, world_size=sizes["dp"])  # what _my_batches reads
    losses = []
    with _quiet_torch():
        for xb, yb in _my_batches(dp, X, Y, c["steps"], c["batch_size"], c["seed"]):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(torch.from_numpy(np.ascontiguousarray(xb))),
                                                torch.from_numpy(np.ascontiguousarray(yb)))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    shards, placements = {}, {}
    with _quiet_torch():
        for ours, theirs in TP_NAMES.items():
            p = net.get_parameter(theirs).detach()
            placements[theirs] = (tuple(repr(q) for q in p.placements), tuple(p.to_local().shape))
            if sizes["dp"] > 1:  # (dp shard, tp placement) -> (Replicate, tp placement): the tp shard
                p = p.redistribute(p.device_mesh, (Replicate(), p.placements[1]))
            a = p.to_local().numpy()
            shards[ours] = np.array(a.T if ours.endswith("weight") else a)
        gathered = flat_params(net, full)
    return {"losses": losses, "params": gathered, "shards": shards, "placements": placements}


@contextmanager
def _quiet_torch():
    """Hide notes torch prints on every rank, none about a fault here: FSDP2's warning that
    the module returns a view (we do no in-place op on it), DTensor's log line that gathering
    a 2-D shard takes two all-gathers, and (bridge_sp) that a module's backward hook fires
    though its input needs no gradient (the input is data)."""
    log = logging.getLogger("torch.distributed.tensor._redistribute")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            yield
    finally:
        log.setLevel(level)


def tp_side_by_side(comm, X, Y, mesh_sizes=None, optimizers=TP_OPTIMIZERS, **kw):
    """On every rank: ``{optimizer: {"mlscale": {...}, "torch": {...}}}``, each optimizer
    run with ``tp_train_mlscale`` and then ``tp_train_torch`` on the same processes."""
    return {o: {"mlscale": tp_train_mlscale(comm, X, Y, mesh_sizes, optimizer=o, **kw),
                "torch": tp_train_torch(comm, X, Y, mesh_sizes, optimizer=o, **kw)} for o in optimizers}


def tp_compare(results):
    """``{optimizer: {"losses": d, "params": d, "shards": d}}``: the largest relative
    differences between mlscale and torch over the ranks (and the shards), from
    ``ms.launch(tp_side_by_side, ...)``'s per-rank list."""
    out = {}
    for o in results[0]:
        sides = [(r[o]["mlscale"], r[o]["torch"]) for r in results]
        out[o] = {"losses": max(rel_diff(m["losses"], t["losses"]) for m, t in sides),
                  "params": max(rel_diff(m["params"], t["params"]) for m, t in sides),
                  "shards": max(rel_diff(m["shards"][k], t["shards"][k]) for m, t in sides for k in TP_NAMES)}
    return out


#: tensor parallelism's names in mlscale and torch (notebook 15 prints this table)
TP_NAME_MAP = [
    ("mp.Mesh(comm, {'dp': 2, 'tp': 2})['tp'] (a sub-communicator)",
     "init_device_mesh('cpu', (2, 2), mesh_dim_names=('dp', 'tp'))['tp']", "the tp group"),
    ("mp.ColumnParallelLinear (W[:, cols_r], (in, out/t))", "ColwiseParallel(): weight Shard(0) of (out, in)",
     "column-parallel linear"),
    ("mp.RowParallelLinear (W[rows_r, :], (in/t, out))", "RowwiseParallel(): weight Shard(1) of (out, in)",
     "row-parallel linear"),
    ("mp.ParallelMLP(tp, d, h) (fc1 column, fc2 row)", "parallelize_module(mlp, mesh['tp'], {'0': "
     "ColwiseParallel(), '2': RowwiseParallel()})", "Megatron MLP"),
    ("g = ReduceFromTP: all-reduce forward, identity backward", "RowwiseParallel output: Partial -> "
     "Replicate (all-reduce)", "row-parallel output all-reduce"),
    ("f = CopyToTP: identity forward, all-reduce backward", "ColwiseParallel input: Replicate, its grad "
     "Partial -> all-reduce", "column-parallel input-grad all-reduce"),
    ("GatherFromTP (ColumnParallelLinear(gather_output=True))", "ColwiseParallel(output_layouts=Replicate())",
     "gather the column shards"),
    ("layer.params['weight'] (my shard, (in, out))", "param.to_local() (a DTensor's shard, (out, in))",
     "this rank's shard"),
    ("mesh['dp'].all_reduce(grad, op='mean') on each shard", "fully_shard(net, mesh=mesh['dp']) after "
     "parallelize_module", "dp x tp (2-D)"),
]

__all__ = ["TP_OPTIMIZERS", "TP_DEFAULTS", "TP_NAMES", "TP_NAME_MAP", "tp_data", "torch_chunk_sizes",
           "tp_train_mlscale", "tp_train_torch", "tp_side_by_side", "tp_compare"]
