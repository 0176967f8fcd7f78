"""Tensor-parallel attention and the tensor-parallel transformer block, with optional
sequence parallelism (Megatron-LM: Shoeybi et al. 2019, section 3 and figure 3;
Megatron SP: Korthikanti et al. 2022, section 4.2.2 and figure 5).

    block = TPBlock(tp_comm, cfg, sequence_parallel=True)     # an nn Module: flat buffers
    model = nn.Sequential([block], dtype=np.float64)          # or inside tp_gpt (three_d.py)
    model.load_state_dict(...)                                # this rank's shards: shard_block_state
    y = block.forward(x)            # x (batch, seq, d), or (batch, seq/t, d) under SP
    dx = block.backward(dy)
    block.sync_grads()              # SP only: all-reduce the norms' and biases' partial grads

Attention: the fused projection ``qkv`` (d, 3d) is COLUMN-parallel with the heads split
over the t ranks: rank r holds heads ``shard_range(num_heads, t, r)`` (whole heads), the
columns of those heads in each of the Q, K and V thirds. Heads are independent, so the
attention core (``nn.attention_forward``) runs on my heads with no communication; the
output projection ``proj`` (d, d) is ROW-parallel: my heads' rows, a partial sum,
completed by one all-reduce (g). The MLP is the Megatron MLP (``tensor.py``). Norms are
replicated. So per block: one all-reduce forward and one backward for each of the two
sub-blocks (attention, MLP), of one (batch, seq, d) array each.

Uneven splits are allowed: ``num_heads`` and ``d_ff`` are cut as ``np.array_split``
does (ranks differ by at most one head); every rank needs at least one head
(``num_heads >= t``), else a ValueError says so.

Sequence parallelism: the norms (and the residual adds) run on my s/t tokens; g is an
all-gather along the sequence before each column-parallel layer and g-bar a
reduce-scatter after each row-parallel one (``sequence.py``): the same bytes as the two
all-reduces. The column-parallel layer keeps only my tokens of its input and gathers
them again in backward (``regather=True``, as Megatron does: one more all-gather per
sub-block in backward) so that no (batch, seq, d) array is stored whole: activation
memory per rank falls from ``4 s b h + (12 s b h + a s^2 b) / t`` elements to
``(16 s b h + a s^2 b) / t`` (Korthikanti's ``s b h (10 + 24/t + 5 a s / (h t))`` ->
``s b h (34 + 5 a s / h) / t`` bytes, without dropout). The norms' parameters and the
row-parallel biases then see only my tokens: their gradients are partial sums, made
whole by ``sync_grads`` (one all-reduce per block, as Megatron's
``allreduce_sequence_parallel_grads``).
"""
from __future__ import annotations

import numpy as np

from ..nn._xp import array_module
from ..nn.attention import attention_forward, attention_backward, matmul, merge_heads, split_heads, split_qkv
from ..nn.layers import Layer
from ..nn.module import Module
from ..nn.norms import NORMS
from ..nn.transformer import gelu_backward, gelu_forward
from .sequence import GatherFromSP, ReduceScatterToSP, check_sequence_parallel
from .tp_comm import CopyToTP, ReduceFromTP, check_shardable, shard_range


class ColumnParallelDense(Layer):
    """``y = x W_r + b_r`` on (..., in_features): my columns of a column-parallel layer.

    Input replicated (operator f: identity forward, all-reduce of dx backward), or, under
    SP, my tokens (operator g: all-gather forward, reduce-scatter of dx backward)."""

    def __init__(self, comm, in_features, out_local, bias=True, sequence_parallel=False, regather=True):
        self.comm, self.in_features, self.out_features, self.bias = comm, int(in_features), int(out_local), bias
        self.sp, self.regather = bool(sequence_parallel), bool(regather)
        self.op = GatherFromSP(comm) if self.sp else CopyToTP(comm)
        self.params = self.grads = None
        self._x = None

    def param_shapes(self):
        shapes = {"weight": (self.in_features, self.out_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng):  # real values come from shard_block_state (load_state_dict)
        return {k: np.zeros(s) for k, s in self.param_shapes().items()}

    def forward(self, x):
        full = self.op.forward(x)  # (b, s, in): every token
        self._x = x if (self.sp and self.regather) else full  # SP: keep my tokens only
        y = matmul(full.reshape(-1, self.in_features), self.params["weight"])
        if self.bias:
            y += self.params["bias"]
        return y.reshape(full.shape[:-1] + (self.out_features,))  # (b, s, my columns)

    def backward(self, dout):
        full = self._x
        if self.sp and self.regather:  # Megatron: gather my tokens again rather than keep them all
            full = self.op.all_gather_seq(full, "backward")
        x2, d2 = full.reshape(-1, self.in_features), dout.reshape(-1, self.out_features)
        self.grads["weight"] += matmul(x2.T, d2)
        if self.bias:
            self.grads["bias"] += d2.sum(axis=0)
        return self.op.backward(matmul(d2, self.params["weight"].T).reshape(full.shape))  # summed over ranks

    def forward_flops(self, tokens):
        return 2 * tokens * self.in_features * self.out_features


class RowParallelDense(Layer):
    """``y = sum_r x_r W_r + b`` : my rows; the sum by g (all-reduce) or, under SP,
    g-bar (reduce-scatter along the sequence); the bias added once, after it."""

    def __init__(self, comm, in_local, out_features, bias=True, sequence_parallel=False):
        self.comm, self.in_features, self.out_features, self.bias = comm, int(in_local), int(out_features), bias
        self.sp = bool(sequence_parallel)
        self.op = ReduceScatterToSP(comm) if self.sp else ReduceFromTP(comm)
        self.params = self.grads = None
        self._x = None

    param_shapes = ColumnParallelDense.param_shapes
    init_params = ColumnParallelDense.init_params

    def forward(self, x):  # (b, s, my rows)
        self._x = x
        y = matmul(x.reshape(-1, self.in_features), self.params["weight"]).reshape(x.shape[:-1] + (-1,))
        y = self.op.forward(y)  # (b, s, d) replicated, or (b, s/t, d) under SP
        if self.bias:
            y = y + self.params["bias"]
        return y

    def backward(self, dout):
        if self.bias:  # under SP: my tokens only, a partial sum (sync_grads)
            self.grads["bias"] += dout.reshape(-1, self.out_features).sum(axis=0)
        dout = self.op.backward(dout)  # (b, s, d)
        x2, d2 = self._x.reshape(-1, self.in_features), dout.reshape(-1, self.out_features)
        self.grads["weight"] += matmul(x2.T, d2)
        return matmul(d2, self.params["weight"].T).reshape(self._x.shape)

    forward_flops = ColumnParallelDense.forward_flops


class TPSelfAttention(Module):
    """Causal self-attention on my heads: qkv column-parallel, proj row-parallel."""

    def __init__(self, comm, d, num_heads, bias=True, sequence_parallel=False, keep_probs=True, regather=True):
        check_shardable(num_heads, comm.world_size, "num_heads")
        self.d, self.num_heads, self.keep_probs = int(d), int(num_heads), bool(keep_probs)
        self.head_dim = self.d // self.num_heads
        self.h0, self.h1 = shard_range(num_heads, comm.world_size, comm.rank)
        self.local_heads = self.h1 - self.h0
        dl = self.local_heads * self.head_dim
        self.qkv = ColumnParallelDense(comm, d, 3 * dl, bias, sequence_parallel, regather)
        self.proj = RowParallelDense(comm, dl, d, bias, sequence_parallel)
        self._cache = None

    def children(self):
        return {"qkv": self.qkv, "proj": self.proj}

    def forward(self, x):
        qkv = self.qkv.forward(x)  # (b, s, 3 * my heads * head_dim)
        q, k, v = split_qkv(qkv, self.local_heads)  # (b, my heads, s, head_dim) each
        y, self._cache = attention_forward(q, k, v, causal=True, keep_probs=self.keep_probs)
        return self.proj.forward(merge_heads(y))

    def backward(self, dout):
        dy = split_heads(self.proj.backward(dout), self.local_heads)
        b, _, t, _ = dy.shape
        dq, dk, dv = attention_backward(dy, self._cache)
        dqkv = array_module(dy).stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(b, t, -1)
        return self.qkv.backward(dqkv)


class TPFeedForward(Module):
    """The Megatron MLP on (b, s, d): fc1 column-, fc2 row-parallel, GELU on my columns."""

    def __init__(self, comm, d, d_ff, bias=True, sequence_parallel=False, regather=True):
        check_shardable(d_ff, comm.world_size, "d_ff")
        self.f0, self.f1 = shard_range(d_ff, comm.world_size, comm.rank)
        self.fc1 = ColumnParallelDense(comm, d, self.f1 - self.f0, bias, sequence_parallel, regather)
        self.fc2 = RowParallelDense(comm, self.f1 - self.f0, d, bias, sequence_parallel)
        self._h = None

    def children(self):
        return {"fc1": self.fc1, "fc2": self.fc2}

    def forward(self, x):
        self._h = self.fc1.forward(x)  # (b, s, my d_ff columns)
        return self.fc2.forward(gelu_forward(self._h))

    def backward(self, dout):
        return self.fc1.backward(gelu_backward(self.fc2.backward(dout), self._h))


class TPBlock(Module):
    """The pre-norm GPT block (``nn.Block``) over a tensor-parallel group ``comm``:
    ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; same parameter names, my shards."""

    def __init__(self, comm, cfg, sequence_parallel=False, regather=True):
        if cfg.recompute == "full":
            raise ValueError("TPBlock: recompute='full' is not supported under tensor parallelism (it would "
                             "repeat the block's collectives); use recompute=None or 'selective'")
        self.comm, self.cfg, self.sp = comm, cfg, bool(sequence_parallel)
        if self.sp:
            check_sequence_parallel(cfg.seq_len, comm.world_size, "TPBlock(sequence_parallel=True)")
        self.ln1, self.ln2 = NORMS[cfg.norm](cfg.d_model), NORMS[cfg.norm](cfg.d_model)
        self.attn = TPSelfAttention(comm, cfg.d_model, cfg.num_heads, cfg.bias, self.sp,
                                    keep_probs=cfg.recompute != "selective", regather=regather)
        self.mlp = TPFeedForward(comm, cfg.d_model, cfg.d_ff, cfg.bias, self.sp, regather)

    def children(self):
        return {"ln1": self.ln1, "attn": self.attn, "ln2": self.ln2, "mlp": self.mlp}

    def forward(self, x):  # (b, s, d), or (b, s/t, d) under SP
        x = x + self.attn.forward(self.ln1.forward(x))
        return x + self.mlp.forward(self.ln2.forward(x))

    def backward(self, dout):
        dx = dout + self.ln2.backward(self.mlp.backward(dout))
        return dx + self.ln1.backward(self.attn.backward(dx))

    @property
    def ops(self):
        return [self.attn.qkv.op, self.attn.proj.op, self.mlp.fc1.op, self.mlp.fc2.op]

    def partial_grad_names(self):
        """Parameters whose gradient is a partial sum under SP (norms, row-parallel biases)."""
        if not self.sp:
            return []
        return [k for k in self.param_shapes() if k.startswith(("ln1.", "ln2.", "attn.proj.bias", "mlp.fc2.bias"))]

    def sync_grads(self):
        """SP: all-reduce the partial gradients of the norms and row-parallel biases over
        the tensor-parallel group, in one buffer. Returns the bytes handed to it (0 without SP)."""
        names = self.partial_grad_names()
        if not names or self.comm.world_size == 1:
            return 0
        xp = self.comm.xp
        flat = xp.concatenate([self.grads[k].reshape(-1) for k in names])
        total = self.comm.all_reduce(flat, op="sum", algorithm="ring")
        i = 0
        for k in names:
            n = self.grads[k].size
            self.grads[k][...] = total[i:i + n].reshape(self.grads[k].shape)
            i += n
        return int(flat.nbytes)

    def flops_per_sample(self, backward=True):
        """Matmul FLOPs on this rank for one sequence (forward; x 3 with backward)."""
        s = self.cfg.seq_len
        dl = self.attn.local_heads * self.attn.head_dim
        f = sum(lay.forward_flops(s) for lay in (self.attn.qkv, self.attn.proj, self.mlp.fc1, self.mlp.fc2))
        f += 4 * s * s * dl
        return f * (3 if backward else 1)


def shard_block_state(full, cfg, world_size, rank):
    """This rank's shards of a single-device block's ``{name: array}`` (``nn.Block``
    names: "ln1.weight", "attn.qkv.weight", ...), for a ``TPBlock`` (values or grads)."""
    d, hd = cfg.d_model, cfg.d_model // cfg.num_heads
    h0, h1 = shard_range(cfg.num_heads, world_size, rank)
    f0, f1 = shard_range(cfg.d_ff, world_size, rank)
    cols = np.concatenate([np.arange(j * d + h0 * hd, j * d + h1 * hd) for j in range(3)])  # my Q, K, V columns
    out = {}
    for k, v in full.items():
        v = np.asarray(v)
        if k == "attn.qkv.weight":
            v = v[:, cols]
        elif k == "attn.qkv.bias":
            v = v[cols]
        elif k == "attn.proj.weight":
            v = v[h0 * hd:h1 * hd]
        elif k in ("mlp.fc1.weight",):
            v = v[:, f0:f1]
        elif k == "mlp.fc1.bias":
            v = v[f0:f1]
        elif k == "mlp.fc2.weight":
            v = v[f0:f1]
        out[k] = np.ascontiguousarray(v)
    return out


__all__ = ["ColumnParallelDense", "RowParallelDense", "TPSelfAttention", "TPFeedForward", "TPBlock",
           "shard_block_state"]
