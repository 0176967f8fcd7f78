"""The bridge to PyTorch, attention heads over tp: mlscale's ``TPSelfAttention`` (the fused
``qkv`` column-parallel by whole heads, ``proj`` row-parallel) next to torch's
``parallelize_module(attn, mesh["tp"], {"q": ColwiseParallel(), "k": ..., "v": ...,
"o": RowwiseParallel()})`` on the same gloo processes, float64 (Shoeybi et al. 2019,
section 3: heads are independent, so each rank runs attention on its heads alone).

    ms.launch(bridge_attention.attention_side_by_side, 2, args=(X, Y), backend="torch")

Both start from ONE single-device ``nn.CausalSelfAttention(d, num_heads)`` (its weights
redrawn at a larger scale, so that attention is not uniform), and compute causal softmax
attention with scale 1/sqrt(head_dim) (torch: ``F.scaled_dot_product_attention(...,
is_causal=True)``), trained on ``F.mse_loss``. With h heads of size e = d / h on t ranks,
rank r owns heads ``r h/t .. (r+1) h/t``, i.e. the dims ``cols_r`` of each of Q, K, V:

===============  ===============================================  ==========================================
parameter        mlscale (fused, (in, out))                        torch (separate, ``weight`` (out, in))
===============  ===============================================  ==========================================
W_qkv (d, 3d)    ``qkv.weight = [Wq[:, cols_r] | Wk[:, cols_r] |   ``q.weight``, ``k.weight``,
                 Wv[:, cols_r]]`` (d, 3d/t): my heads' columns     ``v.weight``: ``Shard(0)``, (d/t, d) each
                 of each third                                     (ColwiseParallel on each)
b_qkv (3d,)      the same columns of the bias                      ``q.bias`` ... ``Shard(0)``
W_proj (d, d)    ``proj.weight = W_proj[cols_r, :]`` (d/t, d)      ``o.weight``: ``Shard(1)``, (d, d/t)
b_proj (d,)      whole on every rank                               ``o.bias``: ``Replicate()``
===============  ===============================================  ==========================================

Why torch needs three Linears: ColwiseParallel cuts a weight's rows into t contiguous
blocks, so on one fused (3d, d) ``qkv`` rank 0 would get all of Q and part of K, not its
heads' Q, K and V; mlscale's ``shard_block_state`` picks the columns of each third.
The torch module sizes its heads from the local tensor (``view(b, s, -1, e)``), so the same
code runs whole or sharded.

Why SGD by default, not Adam: the key bias has a zero gradient (it adds ``q . b_k`` to a
whole row of scores, which softmax ignores), so each library computes rounding noise of
about 1e-17 there, different noise in each; Adam divides by its own sqrt(v) and turns it
into steps of ``lr g / (|g| + eps)`` ~ 1e-11, visible at 1e-10 after a few steps
(``optimizer="adam"`` still runs). SGD keeps noise as noise: the two agree near 1e-16.

Needs torch; importing this module does not import it.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .bridge import _my_batches, _world_group, rel_diff
from .bridge_tp import _mse, _quiet_torch
from .comm.torch_dist import _torch
from .nn import Sequential
from .nn.attention import CausalSelfAttention
from .nn.optim import SGD, Adam
from .parallel.tp_comm import GatherFromTP
from .parallel.tp_attention import TPSelfAttention, shard_block_state

#: the attention training both libraries run (tiny: a second)
ATTN_DEFAULTS = dict(d_model=8, num_heads=4, steps=5, batch_size=8, optimizer="sgd", sgd_lr=0.1, momentum=0.9,
                     adam_lr=1e-2, init_std=0.4, seed=0)
PARTS = ("q", "k", "v")


def attention_data(n=32, seq_len=5, d_model=ATTN_DEFAULTS["d_model"], seed=0):
    """A sequence regression: X (n, seq, d) standard normal, Y = sin(X M / sqrt(d)), float64."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, seq_len, d_model))
    return X, np.sin(X @ rng.standard_normal((d_model, d_model)) / np.sqrt(d_model))


def _config(kw, world_size):
    unknown = set(kw) - set(ATTN_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; the attention bridge takes {sorted(ATTN_DEFAULTS)}")
    c = {**ATTN_DEFAULTS, **kw}
    if c["optimizer"] not in ("sgd", "adam"):
        raise ValueError(f"optimizer={c['optimizer']!r}: use 'sgd' or 'adam'")
    if c["d_model"] % c["num_heads"] or c["num_heads"] % world_size:
        raise ValueError(f"d_model={c['d_model']}, num_heads={c['num_heads']} over tp={world_size}: the bridge "
                         f"needs num_heads dividing d_model and tp dividing num_heads (torch's Shard cuts "
                         f"d/tp dims per rank, which must be whole heads)")
    return c


def full_attention(c):
    """The single-device start: ``Sequential([CausalSelfAttention(d, h)])``, every parameter
    redrawn from normal(0, init_std) (seeded), float64. Names "0.qkv.weight", ..."""
    model = Sequential([CausalSelfAttention(c["d_model"], c["num_heads"])], seed=c["seed"], dtype=np.float64)
    model.params[...] = np.random.default_rng([c["seed"], 1]).normal(0.0, c["init_std"], model.num_params)
    return model


def _optimizer(c, model):
    if c["optimizer"] == "sgd":
        return SGD(model, lr=c["sgd_lr"], momentum=c["momentum"])
    return Adam(model, lr=c["adam_lr"])


def attention_train_mlscale(comm, X, Y, **kw):
    """mlscale's side on this rank (tp = the whole ``comm``): ``{"losses", "params",
    "shards"}``; ``params`` in the single-device model's flat layout (gathered over tp),
    ``shards`` this rank's ``{"qkv.weight": ..., ...}``, (in, out)."""
    c = _config(kw, comm.world_size)
    full = full_attention(c)
    cfg = SimpleNamespace(d_model=c["d_model"], num_heads=c["num_heads"], d_ff=c["d_model"])
    mine = shard_block_state({"attn." + k[2:]: v for k, v in full.named_params().items()}, cfg,
                             comm.world_size, comm.rank)
    model = Sequential([TPSelfAttention(comm, c["d_model"], c["num_heads"])], dtype=np.float64)
    model.load_state_dict({"0." + k[len("attn."):]: v for k, v in mine.items()})
    opt, losses = _optimizer(c, model), []
    for xb, yb in _my_batches(SimpleNamespace(rank=0, world_size=1), X, Y, c["steps"], c["batch_size"],
                              c["seed"]):
        model.zero_grad()
        loss, dz = _mse(model.forward(xb), yb)
        model.backward(dz)
        opt.step()
        losses.append(loss)
    shards = {k[2:]: v.copy() for k, v in model.named_params().items()}
    return {"losses": losses, "params": _gathered(comm, shards, full), "shards": shards}


def _gathered(comm, shards, full):
    d = full.layers[0].d
    cols = lambda a: GatherFromTP(comm, d).forward(np.ascontiguousarray(a))  # noqa: E731  (.., d/t) -> (.., d)
    w, b = np.split(shards["qkv.weight"], 3, axis=1), np.split(shards["qkv.bias"], 3)
    values = {"0.qkv.weight": np.concatenate([cols(x) for x in w], axis=1),
              "0.qkv.bias": np.concatenate([cols(x[None, :])[0] for x in b]),
              "0.proj.weight": cols(shards["proj.weight"].T).T, "0.proj.bias": shards["proj.bias"]}
    out = np.empty(full.num_params)
    for s in full.slots:
        out[s.start:s.stop] = values[s.name].reshape(-1)
    return out


def torch_attention(full):
    """A torch module computing what ``full`` (``attention_full``'s model) computes, with
    separate ``q``, ``k``, ``v``, ``o`` Linears holding its values (transposed: (out, in))."""
    torch, _ = _torch()
    F = torch.nn.functional
    attn = full.layers[0]
    d, e = attn.d, attn.d // attn.num_heads
    p = full.named_params()

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name in PARTS + ("o",):
                setattr(self, name, torch.nn.Linear(d, d, dtype=torch.float64))

        def forward(self, x):  # (b, s, d), replicated
            b, s, _ = x.shape
            q, k, v = (getattr(self, n)(x).view(b, s, -1, e).transpose(1, 2) for n in PARTS)  # (b, my heads, s, e)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(y.transpose(1, 2).reshape(b, s, -1))  # RowwiseParallel: all-reduce inside

    net = Attention()
    with torch.no_grad():
        def put(param, value):
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))

        for j, n in enumerate(PARTS):  # the j-th third of the fused qkv
            put(getattr(net, n).weight, p["0.qkv.weight"][:, j * d:(j + 1) * d].T)
            put(getattr(net, n).bias, p["0.qkv.bias"][j * d:(j + 1) * d])
        put(net.o.weight, p["0.proj.weight"].T)
        put(net.o.bias, p["0.proj.bias"])
    return net


def attention_train_torch(comm, X, Y, **kw):
    """torch's side, the same as ``attention_train_mlscale``: ``torch_attention`` parallelized
    over a 1-D ``DeviceMesh`` of the world (ColwiseParallel on q, k, v; RowwiseParallel on o).
    ``shards`` in mlscale's layout: ``qkv.weight = [q | k | v].to_local()`` transposed."""
    torch, _ = _torch()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    c = _config(kw, comm.world_size)
    _world_group(comm)
    full = full_attention(c)
    net = torch_attention(full)
    mesh = init_device_mesh("cpu", (comm.world_size,), mesh_dim_names=("tp",))
    parallelize_module(net, mesh, {"q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(),
                                   "o": RowwiseParallel()})
    if c["optimizer"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=c["sgd_lr"], momentum=c["momentum"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=c["adam_lr"])
    losses = []
    with _quiet_torch():
        for xb, yb in _my_batches(SimpleNamespace(rank=0, world_size=1), X, Y, c["steps"], c["batch_size"],
                                  c["seed"]):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(torch.from_numpy(np.ascontiguousarray(xb))),
                                                torch.from_numpy(np.ascontiguousarray(yb)))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        loc = {k: p.detach().to_local().numpy() for k, p in net.named_parameters()}
        whole = {k: p.detach().full_tensor().numpy() for k, p in net.named_parameters()}
    shards = {"qkv.weight": np.concatenate([loc[f"{n}.weight"].T for n in PARTS], axis=1),
              "qkv.bias": np.concatenate([loc[f"{n}.bias"] for n in PARTS]),
              "proj.weight": np.array(loc["o.weight"].T), "proj.bias": np.array(loc["o.bias"])}
    values = {"0.qkv.weight": np.concatenate([whole[f"{n}.weight"].T for n in PARTS], axis=1),
              "0.qkv.bias": np.concatenate([whole[f"{n}.bias"] for n in PARTS]),
              "0.proj.weight": whole["o.weight"].T, "0.proj.bias": whole["o.bias"]}
    params = np.empty(full.num_params)
    for s in full.slots:
        params[s.start:s.stop] = values[s.name].reshape(-1)
    placements = {k: (tuple(repr(q) for q in p.placements), tuple(p.to_local().shape))
                  for k, p in net.named_parameters()}
    return {"losses": losses, "params": params, "shards": shards, "placements": placements}


def attention_side_by_side(comm, X, Y, **kw):
    """On every rank: ``{"mlscale": {...}, "torch": {...}}``, the attention trained both ways."""
    return {"mlscale": attention_train_mlscale(comm, X, Y, **kw), "torch": attention_train_torch(comm, X, Y, **kw)}


def attention_compare(results):
    """``{"losses": d, "params": d, "shards": d}``: the largest relative differences over the
    ranks between mlscale and torch, from ``ms.launch(attention_side_by_side, ...)``."""
    sides = [(r["mlscale"], r["torch"]) for r in results]
    return {"losses": max(rel_diff(m["losses"], t["losses"]) for m, t in sides),
            "params": max(rel_diff(m["params"], t["params"]) for m, t in sides),
            "shards": max(rel_diff(m["shards"][k], t["shards"][k]) for m, t in sides for k in m["shards"])}


__all__ = ["ATTN_DEFAULTS", "attention_data", "full_attention", "torch_attention", "attention_train_mlscale",
           "attention_train_torch", "attention_side_by_side", "attention_compare"]
