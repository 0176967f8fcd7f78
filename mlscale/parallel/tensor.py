"""Tensor parallelism: column- and row-parallel linear layers and the Megatron-LM MLP.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism", section 3. A linear layer ``Y = X W + b``, W of shape
(in_features, out_features), is split over the p ranks of a tensor-parallel group:

- **column parallel**: rank r holds columns W[:, cols_r] (and b[cols_r]) and computes
  ``Y_r = X W_r + b_r``, its slice of the output; X must be on every rank (operator f).
- **row parallel**: rank r holds rows W[rows_r, :] and the slice X_r = X[:, rows_r] of
  the input, and computes the partial sum ``X_r W_r``; ``Y = sum_r X_r W_r + b`` needs an
  all-reduce (operator g), and the bias is added once, after it.

The Megatron MLP ``Z = GeLU(X A) B`` splits A by columns and B by rows. GeLU is
elementwise, so each rank applies it to its own columns of X A with no communication,
and those columns are exactly the rows of B it holds: one all-reduce forward (g), one
backward (f), per block. The naive way, both layers column-parallel with gathered
outputs (:class:`NaiveParallelMLP`), needs two all-gathers forward and two all-reduces
backward.

Sharding follows ``np.array_split``: sizes need not divide by p (``shard_sizes``);
each rank needs at least one row/column, or a ValueError names the sizes.
Layers reuse :class:`mlscale.nn.Linear` for the local matmul (its backward sits beside
its forward) and take their initial values from a full-size weight, so a test can build
the same MLP on one device and compare. The communication lives in ``tp_comm.py``.
"""
from __future__ import annotations

import numpy as np

from ..nn.layers import ACTIVATIONS, Linear
from .tp_comm import CopyToTP, GatherFromTP, ReduceFromTP, check_shardable, shard_range


def _full(weight, bias, in_features, out_features, what):
    weight = np.asarray(weight)
    if weight.shape != (in_features, out_features):
        raise ValueError(f"{what}: full weight must have shape ({in_features}, {out_features}) "
                         f"(in_features, out_features), got {weight.shape}")
    if bias is not None and np.asarray(bias).shape != (out_features,):
        raise ValueError(f"{what}: full bias must have shape ({out_features},), got {np.asarray(bias).shape}")
    return weight


def _init_full(in_features, out_features, seed, bias):
    """Full-size initial values as ``mlscale.nn.Linear`` draws them (same on every rank)."""
    rng = np.random.default_rng(seed)
    vals = Linear(in_features, out_features, bias=bias).init_params(rng)
    return vals["weight"], vals.get("bias")


class _ShardedLinear:
    """Holds a local ``nn.Linear`` bound to this rank's params/grads dicts."""

    def _bind_local(self, w, b, dtype, xp):
        self.local = Linear(w.shape[0], w.shape[1], bias=b is not None)
        self.params = {"weight": xp.asarray(np.ascontiguousarray(w), dtype=dtype)}
        if b is not None:
            self.params["bias"] = xp.asarray(np.ascontiguousarray(b), dtype=dtype)
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.local.bind(self.params, self.grads)

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    @property
    def num_params(self):
        return sum(int(v.size) for v in self.params.values())


class ColumnParallelLinear(_ShardedLinear):
    """``Y = X W + b`` with W split by columns: rank r computes ``Y[:, cols_r]``.

    forward:  f (identity) -> ``X W_r + b_r``   [-> all-gather if ``gather_output``]
    backward: [keep my columns] -> dW_r = X^T dY_r, db_r, partial dX_r = dY_r W_r^T -> f
              (all-reduce: dX = sum_r dX_r)

    ``weight``/``bias``: the FULL (in_features, out_features) values (e.g. from a
    single-device model); each rank keeps its columns. None: drawn from ``seed`` as
    ``nn.Linear`` does, identically on every rank.
    """

    def __init__(self, comm, in_features, out_features, weight=None, bias=None, use_bias=True,
                 gather_output=False, seed=0, dtype=np.float64):
        check_shardable(out_features, comm.world_size, "out_features")
        self.comm, self.in_features, self.out_features = comm, int(in_features), int(out_features)
        if weight is None:
            weight, bias = _init_full(in_features, out_features, seed, use_bias)
        weight = _full(weight, bias, self.in_features, self.out_features, "ColumnParallelLinear")
        self.start, self.stop = shard_range(out_features, comm.world_size, comm.rank)
        b = None if bias is None else np.asarray(bias)[self.start:self.stop]
        self._bind_local(weight[:, self.start:self.stop], b, dtype, comm.xp)
        self.f = CopyToTP(comm)
        self.gather = GatherFromTP(comm, out_features) if gather_output else None

    @property
    def ops(self):
        return [op for op in (self.f, self.gather) if op is not None]

    def forward(self, x):  # x: (batch, in_features), the same on every rank
        y = self.local.forward(self.f.forward(x))  # (batch, my columns)
        return self.gather.forward(y) if self.gather is not None else y

    def backward(self, dout):  # (batch, my columns), or (batch, out_features) if gathered
        if self.gather is not None:
            dout = self.gather.backward(dout)
        return self.f.backward(self.local.backward(dout))  # (batch, in_features), summed over ranks


class RowParallelLinear(_ShardedLinear):
    """``Y = X W + b`` with W split by rows: rank r holds W[rows_r, :] and X[:, rows_r].

    forward:  partial ``X_r W_r`` -> g (all-reduce) -> + b (once, after the sum)
    backward: g (identity) -> db = sum of dY, dW_r = X_r^T dY, dX_r = dY W_r^T (my
              columns of dX: no communication)

    The input is already split (``input_is_parallel``): in the Megatron MLP it is the
    output of a column-parallel layer. The bias is replicated; its gradient is the same
    on every rank.
    """

    def __init__(self, comm, in_features, out_features, weight=None, bias=None, use_bias=True,
                 seed=0, dtype=np.float64):
        check_shardable(in_features, comm.world_size, "in_features")
        self.comm, self.in_features, self.out_features = comm, int(in_features), int(out_features)
        if weight is None:
            weight, bias = _init_full(in_features, out_features, seed, use_bias)
        weight = _full(weight, bias, self.in_features, self.out_features, "RowParallelLinear")
        self.start, self.stop = shard_range(in_features, comm.world_size, comm.rank)
        self._bind_local(weight[self.start:self.stop, :], None, dtype, comm.xp)
        if bias is not None:
            self.params["bias"] = comm.xp.asarray(np.asarray(bias), dtype=dtype)
            self.grads["bias"] = comm.xp.zeros_like(self.params["bias"])
        self.g = ReduceFromTP(comm)

    @property
    def ops(self):
        return [self.g]

    def forward(self, x):  # x: (batch, my rows of in_features)
        n = self.stop - self.start
        if x.ndim != 2 or x.shape[1] != n:
            raise ValueError(f"RowParallelLinear on rank {self.comm.rank}: input of shape {tuple(x.shape)}, "
                             f"expected (batch, {n}): columns {self.start}:{self.stop} of the full input")
        y = self.g.forward(self.local.forward(x))  # (batch, out_features), summed over ranks
        if "bias" in self.params:
            y = y + self.params["bias"]
        return y

    def backward(self, dout):  # (batch, out_features), the same on every rank
        dout = self.g.backward(dout)
        if "bias" in self.grads:
            self.grads["bias"] += dout.sum(axis=0)
        return self.local.backward(dout)  # (batch, my rows of in_features)


class _MLPBase:
    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    @property
    def ops(self):
        return [op for layer in self.layers for op in layer.ops]

    def named_grads(self):
        """``{"fc1.weight": shard, ...}``: this rank's gradient shards."""
        return {f"{n}.{k}": v for n, layer in zip(("fc1", "fc2"), self.layers) for k, v in layer.grads.items()}

    def named_params(self):
        return {f"{n}.{k}": v for n, layer in zip(("fc1", "fc2"), self.layers) for k, v in layer.params.items()}


class ParallelMLP(_MLPBase):
    """The Megatron-LM MLP block ``Z = act(X A + a) B + b``: A column-, B row-parallel.

    X (batch, d_model) is replicated; the hidden activations (batch, d_hidden) are split
    by columns and never communicated; Z is replicated. One all-reduce of a
    (batch, d_model) array forward (g) and one backward (f); ``ops`` count them.

    ``w1, b1, w2, b2``: full-size values (e.g. ``nn.MLP([d, h, d])``'s "0.weight",
    "0.bias", "2.weight", "2.bias"); None draws them from ``seed``.
    """

    def __init__(self, comm, d_model, d_hidden, activation="gelu", w1=None, b1=None, w2=None, b2=None,
                 seed=0, dtype=np.float64):
        if activation not in ACTIVATIONS:
            raise ValueError(f"ParallelMLP: activation {activation!r} unknown; use one of {sorted(ACTIVATIONS)}")
        self.comm = comm
        self.fc1 = ColumnParallelLinear(comm, d_model, d_hidden, w1, b1, seed=seed, dtype=dtype)
        self.act = ACTIVATIONS[activation]()  # elementwise: on my columns, no communication
        self.fc2 = RowParallelLinear(comm, d_hidden, d_model, w2, b2, seed=seed + 1, dtype=dtype)
        self.layers = [self.fc1, self.fc2]

    def forward(self, x):  # (batch, d_model), replicated
        h = self.act.forward(self.fc1.forward(x))  # (batch, my hidden columns)
        return self.fc2.forward(h)  # (batch, d_model), replicated after g

    def backward(self, dout):  # (batch, d_model), replicated
        dh = self.act.backward(self.fc2.backward(dout))  # (batch, my hidden columns)
        return self.fc1.backward(dh)  # (batch, d_model), replicated after f


class NaiveParallelMLP(_MLPBase):
    """The naive split, for comparison: BOTH layers column-parallel with gathered
    outputs. Correct, but it all-gathers the (batch, d_hidden) activations and the
    (batch, d_model) output forward and all-reduces two input gradients backward:
    four collectives per block instead of two, and more bytes."""

    def __init__(self, comm, d_model, d_hidden, activation="gelu", w1=None, b1=None, w2=None, b2=None,
                 seed=0, dtype=np.float64):
        if activation not in ACTIVATIONS:
            raise ValueError(f"NaiveParallelMLP: activation {activation!r} unknown; use one of {sorted(ACTIVATIONS)}")
        self.comm = comm
        self.fc1 = ColumnParallelLinear(comm, d_model, d_hidden, w1, b1, gather_output=True, seed=seed, dtype=dtype)
        self.act = ACTIVATIONS[activation]()  # on the full hidden activations, on every rank
        self.fc2 = ColumnParallelLinear(comm, d_hidden, d_model, w2, b2, gather_output=True, seed=seed + 1,
                                        dtype=dtype)
        self.layers = [self.fc1, self.fc2]

    def forward(self, x):
        return self.fc2.forward(self.act.forward(self.fc1.forward(x)))

    def backward(self, dout):
        return self.fc1.backward(self.act.backward(self.fc2.backward(dout)))


def split_like(full, layer, key):
    """This rank's shard of a FULL parameter or gradient of ``layer`` (for oracle tests)."""
    full = np.asarray(full)
    if isinstance(layer, RowParallelLinear):
        return full[layer.start:layer.stop] if key == "weight" else full
    return full[:, layer.start:layer.stop] if key == "weight" else full[layer.start:layer.stop]


__all__ = ["ColumnParallelLinear", "RowParallelLinear", "ParallelMLP", "NaiveParallelMLP", "split_like"]
