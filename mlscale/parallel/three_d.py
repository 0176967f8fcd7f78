"""3D parallel training of the GPT: data x pipeline x tensor parallel on one mesh of ranks
(Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", section 2; picotron's ``train.py``; the Ultra-Scale Playbook).

    def program(comm):
        return train_3d(comm, cfg, batches, dp=2, pp=2, tp=2, num_microbatches=2, lr=1e-3)
    res = ms.launch(program, 8)                     # 8 simulated ranks
    curves = loss_curves(cfg, batches, {"DP": (2, 1, 1), "TP": (1, 1, 2), "PP": (1, 2, 1), "3D": (2, 2, 2)})

Every rank builds the same single-device ``nn.GPT`` from ``seed`` and keeps its part:

- **tp** (fastest-varying rank coordinate: neighbours share a node): the blocks become
  :class:`TPBlock` s (heads and MLP columns split, ``tp_attention.py``), optionally with
  sequence parallelism; embedding, final norm and LM head stay replicated in the group;
- **pp**: the layers are cut into stages (``partition_layers``) run with 1F1B
  (``PipelineParallel``) over the pp sub-communicator;
- **dp**: each data-parallel replica takes 1/dp of every global batch; the gradients
  are averaged over the dp sub-communicator by ``zero=``: 0 (or False) a plain
  all-reduce + Adam; 1 (or True, the default) ZeRO-1 (``ZeroOptimizer``: reduce-scatter,
  Adam on my 1/dp of the stage's parameters, all-gather); 2 gradients reduce-scattered
  into shards unit by unit during the backward, never all-reduced; 3 the stage's
  parameters sharded too, all-gathered just before each layer's forward and backward
  and freed after (``three_d_zero.ShardedStage``, with the bytes and memory it costs;
  ``prefetch=True`` / ``overlap=True`` run those all-gathers / reduce-scatters on the dp
  communication stream, behind the neighbouring layer's compute).

Rank order (``mesh_coords``): row-major over (dp, pp, tp), as ``torch.distributed``'s
``init_device_mesh("cuda", (dp, pp, tp))`` numbers it: rank = (dp_i * pp + pp_i) * tp + tp_i.
Megatron-LM's default order ("tp-dp-pp" in its RankGenerator) puts dp inside pp
instead: rank = (pp_i * dp + dp_i) * tp + tp_i; both keep tp innermost.

With float64 the result equals one device to rounding (tests: 1e-12 after several Adam
steps): each parallelism only reorders sums. ``loss_curves`` runs several layouts on
the same batches, picotron's sanity check that the curves coincide.
"""
from __future__ import annotations

import numpy as np

from ..nn.embedding import Embedding, LMHead
from ..nn.layers import Layer
from ..nn.model import Sequential
from ..nn.norms import NORMS
from ..nn.transformer import GPT, GPTConfig
from .mesh import Mesh
from .pipeline import PipelineParallel
from .sequence import GatherFromSP, ScatterToSP, check_sequence_parallel
from .tp_attention import TPBlock, shard_block_state
from .fsdp_units import MemoryLedger, _state_nbytes
from .three_d_zero import ShardedStage
from .zero import ZeroOptimizer

DIMS = ("dp", "pp", "tp")


def mesh_coords(rank, sizes):
    """Coordinates of ``rank`` on a row-major grid of ``sizes`` (last dim fastest)."""
    out = []
    for n in reversed(sizes):
        out.append(rank % n)
        rank //= n
    return tuple(reversed(out))


def mesh_comms(comm, dp=1, pp=1, tp=1):
    """``(coords, {"dp": comm, "pp": comm, "tp": comm})`` of this rank on the (dp, pp, tp)
    grid, from ``Mesh(comm, {"dp": dp, "pp": pp, "tp": tp})`` (mesh.py): each
    sub-communicator joins the ranks that differ only in that coordinate, ranked by it."""
    mesh = Mesh(comm, dict(zip(DIMS, (dp, pp, tp))))
    return dict(mesh.coords), {name: mesh[name] for name in DIMS}


class _SeqLayer(Layer):
    """A sequence-parallel operator as a parameter-free layer of the model."""

    def __init__(self, op):
        self.op = op

    def forward(self, x):
        return self.op.forward(x)

    def backward(self, dout):
        return self.op.backward(dout)

    def __repr__(self):
        return f"{type(self.op).__name__}()"


class _Head(LMHead):
    """The untied LM head, counting its FLOPs (the pipeline charges them on sim)."""

    def __init__(self, d, vocab_size, seq_len):
        super().__init__(d, vocab_size)
        self.seq_len = seq_len

    def flops_per_sample(self, backward=True):
        return 2 * self.seq_len * self.d * self.vocab_size * (3 if backward else 1)


def tp_gpt(tp_comm, cfg, sequence_parallel=False, dtype=np.float64, xp=None):
    """The GPT of ``cfg`` as this rank of ``tp_comm`` holds it: a ``Sequential`` of
    ``[Embedding, (ScatterToSP), TPBlock x L, (GatherFromSP), norm, LMHead]``. Values are
    zeros/ones: load them with ``shard_gpt_state``."""
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"tp_gpt needs a GPTConfig, got {type(cfg).__name__}")
    if cfg.tie_embeddings:
        raise ValueError("tp_gpt: tie_embeddings=True shares a weight between the first and last layer, which a "
                         "pipeline puts on different ranks; use GPTConfig(tie_embeddings=False)")
    sp = bool(sequence_parallel) and tp_comm.world_size > 1
    if sp:
        check_sequence_parallel(cfg.seq_len, tp_comm.world_size, "tp_gpt(sequence_parallel=True)")
    layers = [Embedding(cfg.vocab_size, cfg.seq_len, cfg.d_model)]
    layers += [_SeqLayer(ScatterToSP(tp_comm))] if sp else []
    layers += [TPBlock(tp_comm, cfg, sequence_parallel=sp) for _ in range(cfg.num_layers)]
    layers += [_SeqLayer(GatherFromSP(tp_comm, grad="split"))] if sp else []
    layers += [NORMS[cfg.norm](cfg.d_model)]  # on every token (Megatron keeps it sequence-parallel)
    layers += [_Head(cfg.d_model, cfg.vocab_size, cfg.seq_len)]
    model = Sequential(layers, seed=0, dtype=dtype, xp=xp)
    model.config, model.sequence_parallel = cfg, sp
    return model


def shard_gpt_state(full, cfg, tp, rank, sequence_parallel=False):
    """This rank's ``{name: array}`` for ``tp_gpt(tp_comm, cfg, sequence_parallel)`` (tp
    ranks) out of a single-device ``GPT``'s ``named_params()`` or ``named_grads()``."""
    L = cfg.num_layers
    off = 1 if (sequence_parallel and tp > 1) else 0  # the ScatterToSP / GatherFromSP layers
    tp_of = {0: 0, L + 1: L + 1 + 2 * off, L + 2: L + 2 + 2 * off}  # embedding, norm, head
    tp_of.update({1 + i: 1 + off + i for i in range(L)})
    out = {}
    for name, v in full.items():
        g, key = name.split(".", 1)
        out[f"{tp_of[int(g)]}.{key}"] = np.asarray(v)
    for i in range(L):  # the blocks: my heads and MLP columns
        pre = f"{1 + off + i}."
        mine = shard_block_state({k[len(pre):]: v for k, v in out.items() if k.startswith(pre)}, cfg, tp, rank)
        out.update({pre + k: v for k, v in mine.items()})
    return out


def _zero_stage(zero):
    """``zero=`` of train_3d as a stage number: True = 1 (ZeRO-1), False = 0 (all-reduce)."""
    if isinstance(zero, bool):
        return int(zero)
    if isinstance(zero, (int, np.integer)) and int(zero) in (0, 1, 2, 3):
        return int(zero)
    raise ValueError(f"train_3d: zero={zero!r}; use 0 (plain all-reduce), 1 (ZeRO-1), 2 (ZeRO-2), 3 (ZeRO-3), "
                     f"or True (= 1) / False (= 0)")


def train_3d(comm, cfg, batches, dp=1, pp=1, tp=1, num_microbatches=1, lr=1e-3, sequence_parallel=False,
             zero=True, seed=0, dtype=np.float64, schedule="1f1b", prefetch=False, overlap=False):
    """Train ``nn.GPT(cfg, seed)`` on ``batches`` (a list of global ``(x, y)`` token
    batches, (B, seq) ints, the same on every rank) with Adam(lr) on the (dp, pp, tp) mesh.

    ``zero``: the ZeRO stage on the dp dim, 0-3 (module docstring); True means 1 and
    False means 0, as before stages 2 and 3 existed. ``prefetch`` (zero=3): all-gather the
    next layer's parameters on the dp communication stream while this layer computes;
    ``overlap`` (zero=2 or 3): reduce-scatter each layer's grads on the stream during the
    backward of the layers below (``ShardedStage``; the same trajectory and bytes, less
    virtual time on sim, two layers in flight in the memory ledger).

    Returns, on every rank, ``{"coords", "losses" (per step; None off the last stage),
    "params" (this rank's shards of its stage's parameters, by model name; zero=3: only
    those wholly inside my dp chunks, see ``stage_params`` to rebuild them from the dp
    group's ``"shards"``), "clock", "zero", "memory" (peak bytes of params, grads and
    optimizer state, ``MemoryLedger``), "units" (elements per unit of my stage; one unit
    for stages 0-1), "shards" ([(flat start, my chunk)]), "slots" ({name: (start, stop,
    shape)} of my stage)}``."""
    stage = _zero_stage(zero)
    if prefetch and stage != 3:
        raise ValueError(f"train_3d: prefetch=True needs zero=3 (zero={stage} gathers no parameters during the "
                         f"step); use zero=3 or prefetch=False")
    if overlap and stage < 2:
        raise ValueError(f"train_3d: overlap=True needs zero=2 or 3 (zero={stage} reduces the gradients after the "
                         f"pipeline step); use zero=2/3 or overlap=False")
    coords, comms = mesh_comms(comm, dp, pp, tp)
    from ..nn.optim import Adam  # lazy: optimizers import the fused kernels

    full = GPT(cfg, seed=seed, dtype=dtype)  # identical on every rank
    model = tp_gpt(comms["tp"], cfg, sequence_parallel, dtype)
    model.load_state_dict(shard_gpt_state(full.named_params(), cfg, tp, coords["tp"], sequence_parallel))
    del full
    pipe = PipelineParallel(comms["pp"], model, num_microbatches, schedule)
    blocks = [layer for layer in pipe.stage.layers if isinstance(layer, TPBlock)]
    lo, hi = pipe.stage.param_range
    slots = {s.name: (s.start, s.stop, s.shape) for s in model.slots if lo <= s.start and s.stop <= hi}
    nb = model.dtype.itemsize
    if stage >= 2:
        def sync(layer):  # sequence parallel: the norms' and biases' partial sums, per micro-batch
            if isinstance(layer, TPBlock):
                layer.sync_grads()
        pipe.stage = ShardedStage(model, pipe.stage.stage, pipe.stage.num_stages, comms["dp"], stage,
                                  lambda shard: Adam(shard, lr=lr), sync=sync, prefetch=prefetch, overlap=overlap)
        ledger, units = pipe.stage.ledger, [u.numel for u in pipe.stage.units]
    else:
        if stage == 1:
            opt = ZeroOptimizer(comms["dp"], pipe.params, lambda shard: Adam(shard, lr=lr))
            state = opt.optimizer
        else:
            opt = state = Adam(pipe.params, lr=lr)
        ledger, units = MemoryLedger(), [hi - lo]
        ledger.alloc("params", (hi - lo) * nb)
        ledger.alloc("grads", (hi - lo) * nb)
        ledger.alloc("optimizer", _state_nbytes(state))
    losses = []
    for step, (x, y) in enumerate(batches):
        n = len(x)
        if n % dp:
            raise ValueError(f"train_3d: batch {step} has {n} sequences, not divisible by dp={dp}: every "
                             f"data-parallel replica needs the same number (use a batch size divisible by dp)")
        b0, b1 = coords["dp"] * (n // dp), (coords["dp"] + 1) * (n // dp)
        if stage >= 2:
            pipe.stage.zero_grad()
        loss = pipe.step(np.asarray(x)[b0:b1], np.asarray(y)[b0:b1])  # my replica's mean loss
        if stage >= 2:
            pipe.stage.step()  # the grads were reduce-scattered during the backward
        else:
            for blk in blocks:
                blk.sync_grads()  # sequence parallel: the norms' and biases' partial sums
            if stage == 1:
                opt.step(pipe.grads)
            else:
                opt.step(comms["dp"].all_reduce(pipe.grads, op="mean", algorithm="ring"))
        losses.append(None if loss is None else float(loss))
    if stage >= 2:
        shards = pipe.stage.local_shards()
    else:
        c0, c1 = (opt.start, opt.stop) if stage == 1 else (0, hi - lo)
        shards = [(lo + c0, model.params[lo + c0:lo + c1].copy())]
    if stage <= 2:
        params = {name: model.params[a:b].reshape(shape).copy() for name, (a, b, shape) in slots.items()}
    else:
        params = _whole_slots(shards, slots)
    clock = comm.clock if comm.backend == "sim" else None
    return {"coords": coords, "losses": losses, "params": params, "clock": clock, "zero": stage,
            "memory": dict(ledger.peak), "units": units, "shards": shards, "slots": slots}


def _whole_slots(shards, slots):
    """``{name: array}`` of the parameters lying wholly inside ``shards``."""
    out = {}
    for name, (a, b, shape) in slots.items():
        for start, chunk in shards:
            if start <= a and b <= start + chunk.size:
                out[name] = chunk[a - start:b - start].reshape(shape).copy()
    return out


def stage_params(results):
    """Per rank, ``{name: array}`` of every parameter of its stage, rebuilt on the host
    from the ``"shards"`` of the dp ranks that share its (pp, tp) coordinates (no
    communication): how to read a ZeRO-3 run's result."""
    groups = {}
    for r in results:
        groups.setdefault((r["coords"]["pp"], r["coords"]["tp"]), []).append(r)
    out = []
    for r in results:
        pieces = [piece for q in groups[(r["coords"]["pp"], r["coords"]["tp"])] for piece in q["shards"]]
        named = {}
        for name, (a, b, shape) in r["slots"].items():
            flat = np.full(b - a, np.nan)
            for start, chunk in pieces:
                s, e = max(a, start), min(b, start + chunk.size)
                if s < e:
                    flat[s - a:e - a] = chunk[s - start:e - start]
            if np.isnan(flat).any():
                raise ValueError(f"stage_params: {name} is not covered by the shards given: pass every rank's result")
            named[name] = flat.reshape(shape)
        out.append(named)
    return out


def train_single(cfg, batches, lr=1e-3, seed=0, dtype=np.float64):
    """The oracle: ``nn.GPT(cfg, seed)`` with Adam(lr) on one device, the same batches.
    Returns ``(losses, model)``."""
    from ..nn.optim import Adam

    model = GPT(cfg, seed=seed, dtype=dtype)
    opt = Adam(model, lr=lr)
    losses = []
    for x, y in batches:
        losses.append(float(model.loss_and_grad(np.asarray(x), np.asarray(y))))
        opt.step()
    return losses, model


def global_losses(results):
    """Per-step loss of the whole batch: the mean over dp of the last stage's (tp rank 0)."""
    pp = 1 + max(r["coords"]["pp"] for r in results)
    last = [r["losses"] for r in results if r["coords"]["pp"] == pp - 1 and r["coords"]["tp"] == 0]
    return [float(np.mean(v)) for v in zip(*last)]




LAYOUTS = {"DP": (2, 1, 1), "TP": (1, 1, 2), "PP": (1, 2, 1), "3D": (2, 2, 2)}


def loss_curves(cfg, batches, layouts=None, num_microbatches=2, lr=1e-3, sequence_parallel=True, seed=0,
                backend="sim", network=None):
    """Picotron's sanity check: ``{name: per-step losses}`` of one device ("1 device")
    and of each ``{name: (dp, pp, tp)}`` layout (default DP, TP, PP and 3D on 2/2/2/8
    ranks) trained on the same ``batches``: in float64 the curves coincide."""
    from ..comm.launch import launch

    layouts = LAYOUTS if layouts is None else layouts
    curves = {"1 device": train_single(cfg, batches, lr=lr, seed=seed)[0]}
    for name, (dp, pp, tp) in layouts.items():
        res = launch(train_3d, dp * pp * tp, args=(cfg, batches, dp, pp, tp, num_microbatches, lr,
                                                     sequence_parallel, True, seed), backend=backend, network=network)
        curves[name] = global_losses(res)
    return curves


def plot_loss_curves(curves, ax=None):
    """One line per layout (markers so that coinciding curves still show); returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    markers = "o^sv*Dx"
    for i, (name, losses) in enumerate(curves.items()):
        ax.plot(range(1, len(losses) + 1), losses, marker=markers[i % len(markers)], markersize=9 - 1.2 * i,
                linestyle="-" if i == 0 else "--", label=name, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    return ax


def sim_mfu(cfg, batches, results, peak_flops):
    """MFU of a simulated run: ``nn.model_flops`` of the tokens trained, over the virtual
    seconds of the slowest rank times world_size times the declared ``peak_flops``
    (the ``NetworkModel.flops`` rate the simulator charged compute at)."""
    from ..nn.flops import mfu

    clocks = [r["clock"] for r in results]
    if any(c is None for c in clocks) or max(clocks) <= 0:
        raise ValueError("sim_mfu needs a sim run that charged compute (virtual clocks > 0); on MPI time the "
                         "run with the wall clock and call nn.mfu directly")
    tokens = sum(int(np.asarray(x).size) for x, _ in batches)
    return mfu(cfg, tokens / max(clocks), peak_flops, num_devices=len(results))


__all__ = ["mesh_coords", "mesh_comms", "tp_gpt", "shard_gpt_state", "train_3d", "train_single", "global_losses",
           "stage_params",
           "DIMS", "LAYOUTS", "loss_curves", "plot_loss_curves", "sim_mfu"]
