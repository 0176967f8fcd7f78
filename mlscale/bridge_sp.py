"""The bridge to PyTorch, sequence parallelism: mlscale's Megatron SP (Korthikanti et al.
2022, section 4.2.2, figure 5) next to torch's ``parallelize_module(block, mesh["tp"],
{"norm": SequenceParallel(), "fc1": ColwiseParallel(input_layouts=Shard(1)),
"fc2": RowwiseParallel(output_layouts=Shard(1))})``, on the same gloo processes, float64.

    ms.launch(bridge_sp.sp_side_by_side, 2, args=(X, Y), backend="torch")

The block is the MLP half of a pre-norm transformer block, ``Z = X + GELU(LN(X) W1 + b1) W2
+ b2`` on (batch, seq, d), trained with SGD (momentum) on the mean of ``(Z - Y)^2`` over every
element. The residual stream and the LayerNorm run on each rank's tokens; the MLP is the
Megatron MLP over tp. Both start from ONE single-device block (``full_block``). Rank r of t
holds the tokens ``seq_range(s, t, r) = [r s/t, (r+1) s/t)`` in both libraries: mlscale's
``seq_range`` and torch's ``Shard(1)`` (``torch.chunk`` on the sequence dim) both cut the
sequence into t contiguous blocks in rank order, the same cut when t divides s (required:
``check_sequence_parallel`` refuses other lengths). Weights are sharded as in
``bridge_tp`` (fc1 by output columns, fc2 by input rows); the norm's weight and bias and
fc2's bias are whole on every rank (torch: ``Replicate()``).

The collectives, per training step (t ranks, a (b, s, d) activation of n = b s d elements):

=====================  ======================================  ======================================
where                  mlscale (``TPFeedForward(sp=True)``)     torch (DTensor redistributions)
=====================  ======================================  ======================================
before fc1, forward    ``GatherFromSP``: all-gather along s    ColwiseParallel input Shard(1) ->
                                                               Replicate: all_gather_into_tensor
after fc2, forward     ``ReduceScatterToSP``: reduce-scatter   RowwiseParallel output Partial ->
                                                               Shard(1): reduce_scatter_tensor
fc2's input grad       all-gather of dZ's shards               Shard(1) -> Replicate: all-gather
fc1's input grad       reduce-scatter of the partial dX        Partial -> Shard(1): reduce-scatter
norm weight, bias      partial sums (my tokens), all-reduced    grads are ``Partial(sum)`` DTensors;
grads                  with fc2.bias in ONE buffer of 3d        the optimizer's step reduces them (2
                       (``sync_grads``)                         all-reduces of d)
=====================  ======================================  ======================================

So the two all-reduces of plain TP (g forward, f backward) become an all-gather and a
reduce-scatter each way: a ring moves (t-1) n itemsize bytes in all per all-gather or
reduce-scatter, 4 (t-1) n itemsize per step, the same as TP's two ring all-reduces of
2 (t-1) n itemsize each. Torch keeps fc1's gathered input for backward (mlscale's
``regather=False``, the default here); Megatron, and mlscale's ``regather=True``, gather it
again in backward instead (one more all-gather, less memory). fc2's bias: mlscale adds it
after the reduce-scatter, so its gradient is a partial sum over my tokens; torch computes
it from the all-gathered dZ (every token), whole on every rank, no extra collective.

Agreement is to rounding (``bridge.TOLERANCE``, 1e-10 relative): losses, gathered
parameters, each rank's shards, and each rank's output activations at the first step.
Needs torch; importing this module does not import it.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .bridge import _my_batches, _world_group, rel_diff
from .bridge_attention import attention_data
from .bridge_tp import _quiet_torch, torch_chunk_sizes
from .comm.torch_dist import _torch
from .nn import Sequential
from .nn.module import Module
from .nn.norms import LayerNorm
from .nn.optim import SGD
from .nn.transformer import FeedForward
from .parallel.mesh import Mesh
from .parallel.sequence import check_sequence_parallel, count_kinds, seq_range
from .parallel.tp_attention import TPBlock, TPFeedForward, shard_block_state
from .parallel.tp_comm import GatherFromTP, shard_sizes

#: the sequence-parallel training both libraries run (tiny: about a second)
SP_DEFAULTS = dict(d_model=6, d_hidden=16, steps=5, batch_size=4, sgd_lr=0.05, momentum=0.9, init_std=0.5,
                   regather=False, seed=0)
#: mlscale's parameter names (in the block) <-> torch's
SP_NAMES = {"ln.weight": "norm.weight", "ln.bias": "norm.bias", "mlp.fc1.weight": "fc1.weight",
            "mlp.fc1.bias": "fc1.bias", "mlp.fc2.weight": "fc2.weight", "mlp.fc2.bias": "fc2.bias"}


def sp_data(n=32, seq_len=8, d_model=SP_DEFAULTS["d_model"], seed=0):
    """A sequence regression: X (n, seq, d) standard normal, Y = sin(X M / sqrt(d)), float64."""
    return attention_data(n, seq_len, d_model, seed)


class ResidualMLP(Module):
    """``x + mlp(ln(x))`` on (batch, seq, d): the second half of ``nn.Block``. ``mlp`` is an
    ``nn.FeedForward`` (single device) or a ``TPFeedForward`` (tensor/sequence parallel)."""

    def __init__(self, ln, mlp):
        self.ln, self.mlp = ln, mlp

    def children(self):
        return {"ln": self.ln, "mlp": self.mlp}

    def forward(self, x):
        return x + self.mlp.forward(self.ln.forward(x))

    def backward(self, dout):
        return dout + self.ln.backward(self.mlp.backward(dout))


class SPResidualMLP(ResidualMLP):
    """The block under sequence parallelism on the tp group ``comm``: x is (b, s/t, d), my
    tokens; the LayerNorm runs on them, the MLP gathers (g) and reduce-scatters (g-bar).
    ``sync_grads`` (``TPBlock``'s) all-reduces the partial norm and fc2.bias gradients."""

    sync_grads = TPBlock.sync_grads

    def __init__(self, comm, d, d_hidden, regather=False):
        super().__init__(LayerNorm(d), TPFeedForward(comm, d, d_hidden, True, True, regather))
        self.comm = comm

    def partial_grad_names(self):
        return ["ln.weight", "ln.bias", "mlp.fc2.bias"]

    @property
    def ops(self):
        return [self.mlp.fc1.op, self.mlp.fc2.op]


def _config(kw, world_size, X):
    unknown = set(kw) - set(SP_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; the SP bridge takes {sorted(SP_DEFAULTS)}")
    c = {**SP_DEFAULTS, **kw}
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[2] != c["d_model"]:
        raise ValueError(f"X has shape {X.shape}: the SP bridge takes (n, seq_len, d_model={c['d_model']}), "
                         "e.g. bridge_sp.sp_data()")
    check_sequence_parallel(X.shape[1], world_size, "the SP bridge")
    h = c["d_hidden"]
    if shard_sizes(h, world_size) != torch_chunk_sizes(h, world_size):
        raise ValueError(f"d_hidden={h} over tp={world_size}: mlscale cuts it {shard_sizes(h, world_size)}, "
                         f"torch {torch_chunk_sizes(h, world_size)}; use a d_hidden divisible by {world_size}")
    return c


def full_block(c):
    """The single-device start: ``Sequential([ResidualMLP(LayerNorm(d), FeedForward(d, h))])``,
    every parameter redrawn from normal(0, init_std) (seeded; the norm's weight 1 + that), float64."""
    model = Sequential([ResidualMLP(LayerNorm(c["d_model"]), FeedForward(c["d_model"], c["d_hidden"]))],
                       seed=c["seed"], dtype=np.float64)
    model.params[...] = np.random.default_rng([c["seed"], 2]).normal(0.0, c["init_std"], model.num_params)
    model.named_params()["0.ln.weight"][...] += 1.0
    return model


def sp_train_mlscale(comm, X, Y, **kw):
    """mlscale's side on this rank, ``Mesh(comm, {"tp": t})["tp"]``: ``{"losses", "params",
    "shards", "activation", "positions", "kinds"}``. Each step this rank reads its tokens
    ``seq_range(s, t, r)`` of the whole batch; the loss: the all-reduced sum of squares / (b s d).
    ``activation``: this rank's block output (b, s/t, d) at the first step; ``positions``:
    its sequence positions; ``kinds``: ``count_kinds`` of the SP operators over the run."""
    c = _config(kw, comm.world_size, X)
    tp = Mesh(comm, {"tp": comm.world_size})["tp"]
    full = full_block(c)
    cfg = SimpleNamespace(d_model=c["d_model"], num_heads=1, d_ff=c["d_hidden"])
    mine = shard_block_state({k[2:]: v for k, v in full.named_params().items()}, cfg, tp.world_size, tp.rank)
    block = SPResidualMLP(tp, c["d_model"], c["d_hidden"], c["regather"])
    model = Sequential([block], dtype=np.float64)
    model.load_state_dict({"0." + k: v for k, v in mine.items()})
    opt = SGD(model, lr=c["sgd_lr"], momentum=c["momentum"])
    lo, hi = seq_range(X.shape[1], tp.world_size, tp.rank)
    losses, first = [], None
    for xb, yb in _my_batches(SimpleNamespace(rank=0, world_size=1), X, Y, c["steps"], c["batch_size"], c["seed"]):
        model.zero_grad()
        z = model.forward(np.ascontiguousarray(xb[:, lo:hi]))  # (b, s/t, d): my tokens
        diff = z - yb[:, lo:hi]
        model.backward(2.0 * diff / yb.size)
        block.sync_grads()
        losses.append(float(tp.all_reduce(np.array([np.sum(diff * diff)]), op="sum", algorithm="ring")[0]) / yb.size)
        opt.step()
        first = z.copy() if first is None else first
    shards = {k[2:]: v.copy() for k, v in model.named_params().items()}
    return {"losses": losses, "params": _gathered(tp, shards, full), "shards": shards, "activation": first,
            "positions": list(range(lo, hi)), "kinds": count_kinds(block.ops)}


def _gathered(tp, shards, full):
    """The whole block from the tp shards (all-gathers over ``tp``), flat as ``full.params``."""
    h = full.layers[0].mlp.fc1.out_features
    cols = lambda a: GatherFromTP(tp, h).forward(np.ascontiguousarray(a))  # noqa: E731  (.., h/t) -> (.., h)
    values = dict(shards)
    values["mlp.fc1.weight"] = cols(shards["mlp.fc1.weight"])
    values["mlp.fc1.bias"] = cols(shards["mlp.fc1.bias"][None, :])[0]
    values["mlp.fc2.weight"] = cols(shards["mlp.fc2.weight"].T).T
    out = np.empty(full.num_params)
    for s in full.slots:
        out[s.start:s.stop] = np.asarray(values[s.name[2:]]).reshape(-1)
    return out


def torch_block(full):
    """A torch module computing what ``full`` computes: ``x + fc2(GELU(fc1(norm(x))))`` with
    ``norm = nn.LayerNorm(d)``, its values copied (Linear weights transposed: (out, in))."""
    torch, _ = _torch()
    blk = full.layers[0]
    d, h = blk.ln.d, blk.mlp.fc1.out_features
    p = full.named_params()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(d, eps=blk.ln.eps, dtype=torch.float64)
            self.fc1 = torch.nn.Linear(d, h, dtype=torch.float64)
            self.act = torch.nn.GELU(approximate="tanh")
            self.fc2 = torch.nn.Linear(h, d, dtype=torch.float64)

        def forward(self, x):  # x: my tokens (b, s/t, d), a plain tensor; so is the output
            return x + self.fc2(self.act(self.fc1(self.norm(x))))

    net = Block()
    with torch.no_grad():
        for ours, theirs in SP_NAMES.items():
            v = p["0." + ours]
            net.get_parameter(theirs).copy_(torch.from_numpy(np.ascontiguousarray(v.T if v.ndim == 2 else v)))
    return net


def _counts(cm):
    return {str(k).split(".")[-1]: int(v) for k, v in cm.get_comm_counts().items()}


def sp_train_torch(comm, X, Y, **kw):
    """torch's side, the same as ``sp_train_mlscale``: ``torch_block`` parallelized over
    ``init_device_mesh("cpu", (t,), mesh_dim_names=("tp",))["tp"]`` with SequenceParallel on
    the norm, ColwiseParallel(input_layouts=Shard(1)) on fc1, RowwiseParallel(output_layouts=
    Shard(1)) on fc2; ``torch.optim.SGD``. Extra keys: ``positions`` (the sequence positions
    torch's ``Shard(1)`` gives this rank: ``distribute_tensor(arange(s))``), ``placements``
    of the parameters and of their gradients at the first step, ``comms`` (torch's
    ``CommDebugMode`` counts of the first step's forward, backward and optimizer step)."""
    torch, dist = _torch()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    c = _config(kw, comm.world_size, X)
    _world_group(comm)
    full = full_block(c)
    net = torch_block(full)
    mesh = init_device_mesh("cpu", (comm.world_size,), mesh_dim_names=("tp",))
    tp = mesh["tp"]
    parallelize_module(net, tp, {"norm": SequenceParallel(), "fc1": ColwiseParallel(input_layouts=Shard(1)),
                                 "fc2": RowwiseParallel(output_layouts=Shard(1))})
    s = X.shape[1]
    positions = distribute_tensor(torch.arange(s)[None, :], tp, [Shard(1)]).to_local()[0].tolist()
    lo, hi = positions[0], positions[-1] + 1
    opt = torch.optim.SGD(net.parameters(), lr=c["sgd_lr"], momentum=c["momentum"])
    losses, first, comms, grads = [], None, None, None
    with _quiet_torch():
        for xb, yb in _my_batches(SimpleNamespace(rank=0, world_size=1), X, Y, c["steps"], c["batch_size"],
                                  c["seed"]):
            opt.zero_grad()
            x, y = (torch.from_numpy(np.ascontiguousarray(a[:, lo:hi])) for a in (xb, yb))
            with CommDebugMode() as fwd:
                z = net(x)
                loss = ((z - y) ** 2).sum() / yb.size  # my tokens' share of the mean
            with CommDebugMode() as bwd:
                loss.backward()
            grads = grads or {k: tuple(repr(q) for q in p.grad.placements) for k, p in net.named_parameters()}
            with CommDebugMode() as step:
                opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total, group=tp.get_group())
            losses.append(float(total))
            if first is None:
                first, comms = z.detach().numpy().copy(), {"forward": _counts(fwd), "backward": _counts(bwd),
                                                           "step": _counts(step)}
        loc = {k: p.detach().to_local().numpy() for k, p in net.named_parameters()}
        whole = {k: p.detach().full_tensor().numpy() for k, p in net.named_parameters()}
    shards = {ours: np.array(loc[t].T if loc[t].ndim == 2 else loc[t]) for ours, t in SP_NAMES.items()}
    params = np.empty(full.num_params)
    for sl in full.slots:
        w = whole[SP_NAMES[sl.name[2:]]]
        params[sl.start:sl.stop] = (w.T if w.ndim == 2 else w).reshape(-1)
    placements = {k: (tuple(repr(q) for q in p.placements), tuple(p.to_local().shape))
                  for k, p in net.named_parameters()}
    return {"losses": losses, "params": params, "shards": shards, "activation": first, "positions": positions,
            "placements": placements, "grad_placements": grads, "comms": comms}


def sp_side_by_side(comm, X, Y, **kw):
    """On every rank: ``{"mlscale": {...}, "torch": {...}}``, the SP block trained both ways."""
    return {"mlscale": sp_train_mlscale(comm, X, Y, **kw), "torch": sp_train_torch(comm, X, Y, **kw)}


def sp_compare(results):
    """``{"losses", "params", "shards", "activations"}``: the largest relative differences over
    the ranks between mlscale and torch, from ``ms.launch(sp_side_by_side, ...)``."""
    sides = [(r["mlscale"], r["torch"]) for r in results]
    return {"losses": max(rel_diff(m["losses"], t["losses"]) for m, t in sides),
            "params": max(rel_diff(m["params"], t["params"]) for m, t in sides),
            "shards": max(rel_diff(m["shards"][k], t["shards"][k]) for m, t in sides for k in SP_NAMES),
            "activations": max(rel_diff(m["activation"], t["activation"]) for m, t in sides)}


def sp_step_bytes(t, batch_size, seq_len, d_model, itemsize=8, regather=False):
    """Bytes one training step of mlscale's SP block puts on the wire, all ranks together, per
    collective (rings): ``{"all_gather": (2 + regather) (t-1) n, "reduce_scatter": 2 (t-1) n,
    "all_reduce": 2 (t-1) (3 d + 1)}`` times itemsize, n = b s d (the loss is the + 1)."""
    n = batch_size * seq_len * d_model
    return {"all_gather": (2 + int(regather)) * (t - 1) * n * itemsize,
            "reduce_scatter": 2 * (t - 1) * n * itemsize,
            "all_reduce": 2 * (t - 1) * (3 * d_model + 1) * itemsize}


#: sequence parallelism's names in mlscale and torch (notebook 15 prints this table)
SP_NAME_MAP = [
    ("mp.seq_range(s, t, r): tokens [r s/t, (r+1) s/t)", "Shard(1) (torch.chunk on the sequence dim)",
     "my tokens"),
    ("LayerNorm on my tokens (x: (b, s/t, d))", "SequenceParallel() on the norm (params Replicate)",
     "sequence-parallel norm"),
    ("ColumnParallelDense(sequence_parallel=True): GatherFromSP", "ColwiseParallel(input_layouts=Shard(1))",
     "all-gather before fc1"),
    ("RowParallelDense(sequence_parallel=True): ReduceScatterToSP", "RowwiseParallel(output_layouts=Shard(1))",
     "reduce-scatter after fc2"),
    ("TPBlock.sync_grads (norm, bias partial grads)", "grads Partial(sum), reduced in optimizer.step()",
     "norm gradients"),
    ("regather=True (Megatron) / False (keep the gathered input)", "autograd keeps the gathered input",
     "fc1's input in backward"),
]

__all__ = ["SP_DEFAULTS", "SP_NAMES", "SP_NAME_MAP", "sp_data", "ResidualMLP", "SPResidualMLP", "full_block",
           "torch_block", "sp_train_mlscale", "sp_train_torch", "sp_side_by_side", "sp_compare", "sp_step_bytes"]
