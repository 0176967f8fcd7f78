"""The bridge to PyTorch: mlscale's DataParallel, ZeRO-1 and FSDP next to torch DDP,
``ZeroRedundancyOptimizer`` and FSDP2 (``fully_shard``), the same training on the same
gloo process group, so a learner sees which torch name does what mlscale showed.

    ms.launch(bridge.side_by_side, 2, args=(X, y), backend="torch")
    # on every rank: {"ddp": {"mlscale": (losses, params), "torch": (losses, params)}, ...}

Every rank runs each method twice on the one ``TorchComm``: once with mlscale's code
(collectives written on send/recv, the ring) and once with torch's wrapper built on the
same default gloo group (``comm.process_group``). Both start from the same float64
parameters (``torch_mlp`` copies an mlscale ``MLP``; torch's ``nn.Linear`` keeps the
weight as (out, in), mlscale's as (in, out): a transpose), and see the same global batches
(``mlscale.data.batches``, each rank its contiguous slice, as ``mlscale.train.train``).

=========  ==========================================  ==========================================
method     mlscale                                     torch
=========  ==========================================  ==========================================
ddp        ``train(sync=DataParallel(bucket_bytes))``  ``DistributedDataParallel(bucket_cap_mb)``
           + ``nn.SGD`` (momentum)                     + ``torch.optim.SGD``
zero1      ``ZeroOptimizer`` (reduce-scatter, Adam on  DDP + ``ZeroRedundancyOptimizer(Adam)``
           my chunk, all-gather)                       (all-reduce, Adam on my tensors, broadcast)
fsdp       ``FSDP(stage=3)``, one unit per layer       ``fully_shard`` per Linear, then the root
           (Zhao et al. 2023; ZeRO-3)                  (FSDP2: DTensor shards on a DeviceMesh)
=========  ==========================================  ==========================================

Why the results agree to rounding, not to the bit: the math is the same (mean gradient
over the ranks, PyTorch's SGD and Adam formulas, ``F.cross_entropy``), but NumPy and torch
multiply matrices with different BLAS kernels and sum in different orders; in float64 the
difference stays near 1e-15 relative per step. ``compare`` returns the largest relative
differences; the tests and notebook 15 hold them under ``TOLERANCE``.

Tensor parallelism (mlscale's ``ParallelMLP`` beside torch's ``ColwiseParallel`` /
``RowwiseParallel``, on tp and on dp x tp meshes) is in ``mlscale.bridge_tp``, attention heads
over tp in ``mlscale.bridge_attention``, sequence parallelism (the LayerNorm on sequence shards,
``SequenceParallel``) in ``mlscale.bridge_sp``; ``tour`` runs them too when given their data.

Needs torch (``pip install "mlscale[torch]"``); importing this module does not import it.
"""
from __future__ import annotations

import numpy as np

from .comm.torch_dist import _torch
from .data import split_batch
from .nn import MLP
from .nn.layers import GELU, Linear, ReLU, Tanh
from .nn.optim import SGD, Adam
from .parallel.fsdp import FSDP
from .parallel.zero import ZeroOptimizer
from .train import DataParallel, train
from .train.loop import _global_batches

METHODS = ("ddp", "zero1", "fsdp")
#: largest relative difference of losses and final parameters allowed between mlscale and torch (float64)
TOLERANCE = 1e-10
#: the training every method runs (small: the notebook runs all three twice in seconds)
DEFAULTS = dict(sizes=(2, 32, 32, 3), steps=20, batch_size=32, sgd_lr=0.1, momentum=0.9, adam_lr=1e-2,
                bucket_bytes=2048, seed=0)


def torch_mlp(model):
    """A ``torch.nn.Sequential`` computing exactly what the mlscale ``model`` (an ``MLP``
    or a ``Sequential`` of Linear / ReLU / GELU / Tanh) computes, with a copy of its
    parameters in its dtype. ``nn.Linear(i, o).weight`` is (o, i): mlscale's W transposed."""
    torch, _ = _torch()
    dt = {np.dtype("float64"): torch.float64, np.dtype("float32"): torch.float32}.get(np.dtype(model.dtype))
    if dt is None:
        raise TypeError(f"torch_mlp: the model is {model.dtype}; build it with dtype=np.float64 or np.float32")
    layers = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias, dtype=dt)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer.params["weight"].T)))
                if layer.bias:
                    t.bias.copy_(torch.from_numpy(np.ascontiguousarray(layer.params["bias"])))
            layers.append(t)
        elif isinstance(layer, (ReLU, Tanh, GELU)):
            layers.append({ReLU: torch.nn.ReLU, Tanh: torch.nn.Tanh}.get(type(layer),
                          lambda: torch.nn.GELU(approximate="tanh"))())
        else:
            raise TypeError(f"torch_mlp: layer {i} is a {type(layer).__name__}; the bridge maps Linear, ReLU, "
                            "GELU and Tanh (an MLP)")
    return torch.nn.Sequential(*layers)


def flat_params(tmodel, model):
    """The parameters of the torch module ``tmodel`` as one flat NumPy array in the layout
    of mlscale's ``model.params`` (layer by layer, weight (in, out) then bias). FSDP2's
    DTensor parameters are gathered first (``full_tensor()``: an all-gather, collective)."""
    out = np.empty(model.num_params, dtype=model.dtype)
    for s in model.slots:
        p = getattr(tmodel[s.layer], s.key).detach()
        if hasattr(p, "full_tensor"):
            p = p.full_tensor()
        a = p.numpy()
        out[s.start:s.stop] = (a.T if s.key == "weight" else a).reshape(-1)
    return out


def _world_group(comm):
    """The default process group, where torch's wrappers are built (checked to be comm's)."""
    _, dist = _torch()
    if getattr(comm, "backend", None) != "torch":
        raise TypeError(f"the torch bridge runs on backend='torch' (got a {type(comm).__name__}): "
                        "ms.launch(fn, 2, backend='torch')")
    if comm.world_size != dist.get_world_size():
        raise ValueError(f"the torch bridge builds DDP / ZeRO / FSDP2 on the default group of "
                         f"{dist.get_world_size()} ranks; this communicator has {comm.world_size} "
                         "(a split): run it on the world communicator")
    return comm.process_group


def _my_batches(comm, X, y, steps, batch_size, seed):
    stream = _global_batches(X, y, batch_size, seed)
    for _ in range(steps):
        yield split_batch(next(stream), comm.rank, comm.world_size)


def train_mlscale(comm, method, X, y, **kw):
    """``(losses, final flat params)`` on this rank of ``method`` ("ddp", "zero1", "fsdp")
    run with mlscale's own classes on ``comm``; ``kw`` overrides ``DEFAULTS``."""
    c = _config(method, kw)
    model = MLP(c["sizes"], seed=c["seed"], dtype=np.float64)
    if method == "ddp":
        hist = train(comm, model, lambda m: SGD(m, lr=c["sgd_lr"], momentum=c["momentum"]), X, y,
                     sync=DataParallel(bucket_bytes=c["bucket_bytes"]), steps=c["steps"],
                     batch_size=c["batch_size"], seed=c["seed"])
        return list(hist.losses), model.params.copy()
    losses = []
    if method == "zero1":
        zero = ZeroOptimizer(comm, model.params, lambda s: Adam(s, lr=c["adam_lr"]))
        for xb, yb in _my_batches(comm, X, y, c["steps"], c["batch_size"], c["seed"]):
            losses.append(float(model.loss_and_grad(xb, yb)))
            zero.step(model.grads)
        return losses, model.params.copy()
    fsdp = FSDP(comm, model, lambda s: Adam(s, lr=c["adam_lr"]), stage=3)
    for xb, yb in _my_batches(comm, X, y, c["steps"], c["batch_size"], c["seed"]):
        losses.append(float(fsdp.loss_and_grad(xb, yb)))
        fsdp.step()
    return losses, fsdp.full_params()


def train_torch(comm, method, X, y, **kw):
    """The same as ``train_mlscale`` with torch's wrappers on the default gloo group:
    DDP + SGD, DDP + ZeroRedundancyOptimizer(Adam), fully_shard + Adam."""
    torch, _ = _torch()
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    c = _config(method, kw)
    group = _world_group(comm)
    model = MLP(c["sizes"], seed=c["seed"], dtype=np.float64)  # the same start as train_mlscale's
    net = torch_mlp(model)
    if method == "fsdp":
        mesh = DeviceMesh.from_group(group, "cpu", mesh_dim_names=("dp",))
        for layer in net:
            if isinstance(layer, torch.nn.Linear):  # one FSDP unit per layer, as mlscale's units=None
                fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        run, opt = net, torch.optim.Adam(net.parameters(), lr=c["adam_lr"])
    else:
        run = DDP(net, process_group=group, bucket_cap_mb=c["bucket_bytes"] / 2**20)
        if method == "ddp":
            opt = torch.optim.SGD(run.parameters(), lr=c["sgd_lr"], momentum=c["momentum"])
        else:
            opt = ZeroRedundancyOptimizer(run.parameters(), optimizer_class=torch.optim.Adam, lr=c["adam_lr"],
                                          process_group=group)
    losses = []
    for xb, yb in _my_batches(comm, X, y, c["steps"], c["batch_size"], c["seed"]):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(run(torch.from_numpy(np.ascontiguousarray(xb, np.float64))),
                                                 torch.from_numpy(np.asarray(yb, np.int64)))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, flat_params(net, model)


def _config(method, kw):
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {METHODS}")
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; the bridge takes {sorted(DEFAULTS)}")
    return {**DEFAULTS, **kw}


def side_by_side(comm, X, y, methods=METHODS, **kw):
    """On every rank: ``{method: {"mlscale": (losses, params), "torch": (losses, params)}}``,
    each method run with mlscale's classes and then torch's, on the same ``comm``."""
    return {m: {"mlscale": train_mlscale(comm, m, X, y, **kw), "torch": train_torch(comm, m, X, y, **kw)}
            for m in methods}


def rel_diff(a, b):
    """max |a - b| / max(|b|): the difference relative to the size of the values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"rel_diff: shapes {a.shape} and {b.shape} differ")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300)) if a.size else 0.0


def compare(results):
    """``{method: (loss rel. difference, params rel. difference)}``, the largest over ranks,
    from ``ms.launch(side_by_side, ...)``'s list of per-rank results."""
    out = {}
    for m in results[0]:
        dl = max(rel_diff(r[m]["mlscale"][0], r[m]["torch"][0]) for r in results)
        dp = max(rel_diff(r[m]["mlscale"][1], r[m]["torch"][1]) for r in results)
        out[m] = (dl, dp)
    return out


def mesh_side_by_side(comm, sizes):
    """On every rank: ``(mlscale's coordinates, torch's)`` of this rank on a mesh of
    ``sizes`` ({dim: size}, slowest first): ``mp.Mesh(comm, sizes).coords`` and, from
    ``init_device_mesh("cpu", shape, mesh_dim_names=dims)``, ``mesh[dim].get_local_rank()``
    for each dim. Both put the LAST dim fastest (row-major)."""
    from torch.distributed.device_mesh import init_device_mesh

    from .parallel.mesh import Mesh

    _world_group(comm)
    mine = Mesh(comm, dict(sizes)).coords
    tmesh = init_device_mesh("cpu", tuple(sizes.values()), mesh_dim_names=tuple(sizes))
    theirs = {d: int(tmesh[d].get_local_rank()) for d in sizes}
    return dict(mine), theirs


def fsdp_shard_numels(comm, sizes=DEFAULTS["sizes"], seed=0):
    """The parameter elements this rank keeps per layer under mlscale's ``FSDP(stage=3)``
    (one unit per layer): chunk r of each unit's FLAT parameters (``np.array_split``).
    Any engine (sim included)."""
    fsdp = FSDP(comm, MLP(sizes, seed=seed, dtype=np.float64), lambda s: Adam(s, lr=1e-3), stage=3)
    return [int(u.hi - u.lo) for u in fsdp.units if u.numel]


def fsdp2_shard_numels(sizes, world_size, rank):
    """What FSDP2 keeps on ``rank`` per Linear of an MLP of ``sizes``: each parameter is
    sharded on dim 0 (``Shard(0)``, torch.chunk's rule): ceil(out / p) rows of the (out, in)
    weight and of the bias per rank, the last ranks' chunks shorter or empty."""
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        rows = -(-fan_out // world_size)
        mine = max(0, min(rows, fan_out - rank * rows))
        out.append(mine * fan_in + mine)
    return out


def shard_numels(comm, sizes=DEFAULTS["sizes"], seed=0):
    """On every rank: ``{"mlscale": [...], "torch": [...]}``, the number of parameter
    elements this rank keeps per layer under ZeRO-3: mlscale's ``FSDP`` (flat chunks,
    ``fsdp_shard_numels``) and FSDP2's ``fully_shard`` (``p.to_local().numel()`` of each
    parameter, the rows rule of ``fsdp2_shard_numels``)."""
    torch, _ = _torch()
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    group = _world_group(comm)
    ours = fsdp_shard_numels(comm, sizes, seed)
    net = torch_mlp(MLP(sizes, seed=seed, dtype=np.float64))
    mesh = DeviceMesh.from_group(group, "cpu", mesh_dim_names=("dp",))
    theirs = []
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
            theirs.append(sum(int(p.to_local().numel()) for p in layer.parameters()))
    return {"mlscale": ours, "torch": theirs}


def tour(comm, X, y, mesh_sizes=None, tp_data=None, attention_data=None, sp_data=None, **kw):
    """What notebook 15 runs in ONE launch (each costs seconds): the three trainings side by
    side, the mesh coordinates, and the shard sizes. ``mesh_sizes`` default: {"dp": 1, "tp": p}.
    ``tp_data=(X, Y)`` adds ``"tp"``: tensor parallelism over all the ranks, mlscale's
    ParallelMLP beside torch's ColwiseParallel / RowwiseParallel (``bridge_tp.tp_side_by_side``);
    ``attention_data=(X, Y)`` adds ``"attention"``: the heads split over the ranks
    (``bridge_attention.attention_side_by_side``); ``sp_data=(X, Y)`` adds ``"sp"``: sequence
    parallelism, the norm on sequence shards beside SequenceParallel (``bridge_sp.sp_side_by_side``)."""
    mesh_sizes = mesh_sizes or {"dp": 1, "tp": comm.world_size}
    out = {"training": side_by_side(comm, X, y, **kw), "mesh": mesh_side_by_side(comm, mesh_sizes),
           "shards": shard_numels(comm, kw.get("sizes", DEFAULTS["sizes"]), kw.get("seed", 0))}
    if tp_data is not None:
        from .bridge_tp import tp_side_by_side  # it imports this module's helpers

        out["tp"] = tp_side_by_side(comm, *tp_data)
    if attention_data is not None:
        from .bridge_attention import attention_side_by_side

        out["attention"] = attention_side_by_side(comm, *attention_data)
    if sp_data is not None:
        from .bridge_sp import sp_side_by_side

        out["sp"] = sp_side_by_side(comm, *sp_data)
    return out


#: mlscale's names and torch's for the same idea (notebook 15 prints this table)
NAME_MAP = [
    ("ms.launch(fn, 4, backend='torch')", "torchrun --nproc-per-node 4 / mp.spawn", "start the ranks"),
    ("comm (a Communicator), comm.rank, comm.world_size", "ProcessGroup, dist.get_rank(), get_world_size()",
     "the group of ranks"),
    ("comm.all_reduce / reduce_scatter / all_gather", "dist.all_reduce / reduce_scatter_tensor / "
     "all_gather_into_tensor", "collectives"),
    ("comm.split(color)", "dist.new_group(ranks)", "sub-groups"),
    ("mp.Mesh(comm, {'dp': 2, 'tp': 2}); mesh['tp']", "init_device_mesh('cpu', (2, 2), "
     "mesh_dim_names=('dp', 'tp')); mesh['tp'].get_group()", "N-D device mesh"),
    ("train.DataParallel(bucket_bytes=25 * 2**20)", "DistributedDataParallel(model, bucket_cap_mb=25)",
     "gradient buckets"),
    ("DataParallel(overlap=True) (comm.start)", "DDP's autograd hooks (always on)", "overlap all-reduce "
     "with backward"),
    ("DataParallel(accumulate=k)", "with ddp.no_sync(): ... (k - 1 micro-batches)", "gradient accumulation"),
    ("mp.ZeroOptimizer(comm, params, make_optimizer)", "ZeroRedundancyOptimizer(params, optimizer_class)",
     "ZeRO-1: shard the optimizer state"),
    ("mp.FSDP(comm, model, make_optimizer, stage=3)", "fully_shard(module, mesh=mesh) (FSDP2)",
     "ZeRO-3: shard params, grads, state"),
    ("FSDP(units=None): one unit per layer", "fully_shard on each layer, then on the root", "FSDP units"),
    ("FSDP(stage=2)", "fully_shard(..., reshard_after_forward=False)", "ZeRO-2-like: keep params "
     "after forward"),
    ("FSDP(prefetch=True)", "implicit forward/backward prefetch (set_modules_to_forward_prefetch)",
     "prefetch the next unit"),
    ("mp.MixedPrecisionPolicy(param_dtype, reduce_dtype)", "fsdp.MixedPrecisionPolicy(param_dtype, "
     "reduce_dtype)", "mixed precision"),
    ("FSDP.local_shards() / full_params()", "param.to_local() / param.full_tensor() (DTensor)",
     "read the shards"),
]


__all__ = ["METHODS", "TOLERANCE", "DEFAULTS", "NAME_MAP", "torch_mlp", "flat_params", "train_mlscale",
           "train_torch", "side_by_side", "rel_diff", "compare", "mesh_side_by_side", "fsdp_shard_numels",
           "fsdp2_shard_numels", "shard_numels", "tour"]
