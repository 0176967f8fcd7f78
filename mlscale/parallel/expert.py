"""Expert parallelism: the E experts of a mixture-of-experts layer split over the ranks of
an ``ep`` group, tokens sent to their expert and back with two all-to-alls (GShard,
Lepikhin et al. 2020, section 3.2; Switch Transformer, Fedus et al. 2021, figure 3;
DeepSpeed-MoE and Megatron-LM's "token dispatcher").

    mesh = Mesh(comm, {"dp": 2, "ep": 2})
    layer = ExpertParallelMoE(mesh, d=16, d_ff=32, num_experts=4, top_k=2)   # dim="ep"
    model = Sequential([layer], seed=0, dtype=np.float64)   # same seed on every rank
    y = model.forward(x_mine)          # my tokens (the data-parallel shard) in, my outputs out

Rank r of the ep group (size p) owns experts ``r E/p .. (r+1) E/p - 1`` (``E % p == 0``)
and holds its own tokens and the same router (replicated). Per layer:

==========  =================================================================
forward     route my tokens (mlscale.nn.MoE's router, capacity and drops);
            all-to-all the kept rows' counts per expert (p x E/p int64);
            DISPATCH: all-to-all the kept token rows to the rank of their expert
            (uneven pieces, ``all_to_all_v``); run my experts on what arrived;
            COMBINE: all-to-all the outputs back; y_t = sum_j g_tj E_e(x_t)
backward    the same two all-to-alls reversed: d E_e(x) = g dy goes to the
            expert's rank, the experts' input gradients come back
==========  =================================================================

Capacity is counted PER RANK: each rank's tokens are one GShard group, so a rank
decides its drops alone (no communication before the dispatch) and sends at most
``C = ceil(capacity_factor k T_r / E)`` rows to each expert. The single-device oracle is
``nn.MoE(groups=p)`` on the ranks' tokens concatenated in rank order: the same drops,
the same rows in each expert (group after group, each in slot order), the same output
to rounding. The losses: each rank's ``aux_loss`` (and ``z_loss``) is its group's loss
divided by p, so the p ranks' losses SUM to the oracle's (the mean over groups); the
router's gradient on a rank is its tokens' share (sum it over the ranks that hold
tokens: the data-parallel all-reduce does). On a Mesh only the ``dim`` ("ep") group
exchanges tokens; ranks on other dims (dp) run independent copies of the layer.

Bytes on the wire (``algorithm="pairwise"``, the default: each byte moves once; a
rank's own piece stays home): rank r, with ``s_r`` rows sent to other ranks and ``q_r``
rows received from them, sends in one forward and backward
``8 (p-1) E/p + 2 (s_r + q_r) d itemsize`` bytes (counts; dispatch + combine forward;
the two reversed in backward), in 5 (p-1) messages; :func:`ep_wire_bytes` says it,
:func:`ep_traffic` reads it from a sim trace.
"""
from __future__ import annotations

import numpy as np

from ..nn._xp import array_module
from ..nn.layers import Linear
from ..nn.module import Module
from ..nn.moe import Experts, Routing, check_moe_args, flat_tokens


def check_expert_split(num_experts, ep, where="ExpertParallelMoE"):
    """ValueError naming E and ep unless the experts split evenly over the ep ranks."""
    if int(num_experts) % int(ep):
        ok = [q for q in range(1, int(num_experts) + 1) if int(num_experts) % q == 0]
        raise ValueError(f"{where}: num_experts={num_experts} experts cannot be split evenly over ep={ep} ranks; "
                         f"use num_experts a multiple of {ep} (e.g. {(int(num_experts) // int(ep) + 1) * int(ep)}) "
                         f"or an ep group of size {ok} (a Mesh dim 'ep' of that size)")


class ExpertParallelMoE(Module):
    """``nn.MoE`` with its experts split over the ranks of ``comm_or_mesh`` (a
    Communicator, or a Mesh whose dim ``dim`` is the ep group); see the module docstring.

    Same parameter names as ``nn.MoE`` (``router.weight`` (d, E); ``experts.w1`` etc. of
    my E/p experts) and the same initial values for a given seed. After forward: the
    stats of ``nn.MoE`` for MY tokens (``tokens_per_expert`` (E,), ``routed_per_expert``,
    ``dropped``, ``dropped_tokens``, ``capacity``, ``aux_loss``, ``z_loss``: my share),
    and ``expert_load`` (E/p,) rows my experts ran, ``sent_rows``/``recv_rows`` (p,) rows
    sent to / received from each ep rank (my own included)."""

    def __init__(self, comm_or_mesh, d, d_ff, num_experts, top_k=1, capacity_factor=1.25, renormalize=False,
                 aux_loss_coef=0.01, z_loss_coef=0.0, activation="gelu", dim="ep", algorithm="pairwise"):
        comm = comm_or_mesh[dim] if hasattr(comm_or_mesh, "dims") else comm_or_mesh
        check_moe_args(d, d_ff, num_experts, top_k, capacity_factor, "ExpertParallelMoE")
        p = comm.world_size
        check_expert_split(num_experts, p)
        self.comm, self.p, self.algorithm = comm, p, algorithm
        self.d, self.d_ff, self.E, self.k = int(d), int(d_ff), int(num_experts), int(top_k)
        self.El = self.E // p
        self.first = comm.rank * self.El
        self.capacity_factor, self.renormalize = capacity_factor, bool(renormalize)
        self.aux_loss_coef, self.z_loss_coef = float(aux_loss_coef), float(z_loss_coef)
        self.router = Linear(d, num_experts, bias=False)
        self.experts = Experts(self.El, d, d_ff, activation, first=self.first, total=self.E)
        self._route = self._plan = None

    def children(self):
        return {"router": self.router, "experts": self.experts}

    def _a2a(self, x, sizes):
        y, got = self.comm.all_to_all_v(x, sizes, algorithm=self.algorithm)
        return y, got

    def forward(self, x):  # my tokens, (..., d)
        xp = array_module(x)
        x2 = flat_tokens(x, self.d, "ExpertParallelMoE")
        p, El = self.p, self.El
        r = self._route = Routing(self.router.forward(x2), self.k, self.capacity_factor, self.renormalize,
                                  self.aux_loss_coef, self.z_loss_coef)
        kept = np.asarray(r.kept.tolist(), dtype=np.int64)  # (E,) rows I send to each expert
        send_idx = xp.concatenate(r.rows)  # expert by expert, each in slot order
        send_choice = xp.concatenate(r.choice)
        sent = kept.reshape(p, El).sum(axis=1).tolist()  # rows to each rank
        cnt = self.comm.all_to_all(xp.asarray(kept.reshape(p, El)), algorithm=self.algorithm)
        cnt = np.asarray(cnt.tolist(), dtype=np.int64)  # (p, El): rows from rank s for my expert e
        xin, recv = self._a2a(x2[send_idx], sent)  # DISPATCH; source by source, expert by expert
        # reorder to expert by expert, source by source (= the oracle's rows of each expert)
        off = np.concatenate([[0], np.cumsum(cnt.reshape(-1))]).reshape(-1)[:-1].reshape(p, El)
        perm = np.concatenate([np.arange(off[s, e], off[s, e] + cnt[s, e]) for e in range(El) for s in range(p)]
                              + [np.zeros(0, np.int64)]).astype(np.int64)
        perm = xp.asarray(perm)
        load = cnt.sum(axis=0)  # (El,)
        cut = np.concatenate([[0], np.cumsum(load)])
        xe = xin[perm]
        outs = self.experts.forward_list([xe[cut[e]:cut[e + 1]] for e in range(El)])
        back = xp.empty_like(xin)
        back[perm] = xp.concatenate(outs)
        yback, _ = self._a2a(back, recv)  # COMBINE: my rows, in send order
        gates = r.gates[send_idx, send_choice][:, None]
        y = xp.zeros_like(x2)
        seg = np.concatenate([[0], np.cumsum(kept)])
        for e in range(self.E):  # a token appears at most once per expert
            s0, s1 = seg[e], seg[e + 1]
            y[send_idx[s0:s1]] += gates[s0:s1] * yback[s0:s1]
        self._plan = (x.shape, send_idx, send_choice, gates, yback, sent, recv, perm, cut, seg)
        self.aux_loss, self.z_loss = r.aux_loss / p, r.z_loss / p
        self.tokens_per_expert, self.routed_per_expert = kept, np.asarray(r.routed.tolist())
        self.dropped = int(self.routed_per_expert.sum() - kept.sum())
        self.dropped_tokens = int((~r.keep).all(axis=1).sum())
        self.capacity, self.expert_load = r.capacity, load
        self.sent_rows, self.recv_rows = list(sent), list(recv)
        return y.reshape(x.shape)

    def backward(self, dout):
        if self._plan is None:
            raise RuntimeError("ExpertParallelMoE.backward called before forward")
        xp = array_module(dout)
        shape, send_idx, send_choice, gates, yback, sent, recv, perm, cut, seg = self._plan
        dy = dout.reshape(-1, self.d)
        dys = dy[send_idx]  # (rows sent, d)
        dgates = xp.zeros_like(self._route.gates)
        dgates[send_idx, send_choice] = (dys * yback).sum(axis=1)
        din, _ = self._a2a(gates * dys, sent)  # d E_e(x) to the expert's rank
        de = din[perm]
        dxs = self.experts.backward_list([de[cut[e]:cut[e + 1]] for e in range(self.El)])
        back = xp.empty_like(din)
        back[perm] = xp.concatenate(dxs)
        dxh, _ = self._a2a(back, recv)  # the experts' input grads come home, in send order
        dx = xp.zeros_like(dy)
        for e in range(self.E):
            s0, s1 = seg[e], seg[e + 1]
            dx[send_idx[s0:s1]] += dxh[s0:s1]
        dx += self.router.backward(self._route.backward(dgates, 1.0 / self.p))
        return dx.reshape(shape)

    def __repr__(self):
        return (f"ExpertParallelMoE(d={self.d}, d_ff={self.d_ff}, experts {self.first}..{self.first + self.El - 1} "
                f"of {self.E} on ep rank {self.comm.rank}/{self.p}, top_k={self.k})")


def ep_wire_bytes(sent_rows, recv_rows, rank, d, itemsize, num_experts, backward=True):
    """Bytes ep rank ``rank`` sends in one forward (and backward) under pairwise all-to-alls:
    ``8 (p-1) E/p`` (the counts) ``+ (1 or 2) (s + q) d itemsize``, s = rows sent to other
    ranks (``sent_rows`` without mine), q = rows received from them."""
    p = len(sent_rows)
    s = sum(sent_rows) - sent_rows[rank]
    q = sum(recv_rows) - recv_rows[rank]
    return 8 * (p - 1) * (int(num_experts) // p) + (2 if backward else 1) * (s + q) * int(d) * int(itemsize)


def ep_traffic(trace, label="all_to_all"):
    """From a sim trace: ``{"bytes_sent": [per global rank], "bytes_received": [...],
    "messages": [...]}`` of the messages whose label starts with ``label``."""
    n = trace.world_size
    out = {"bytes_sent": [0] * n, "bytes_received": [0] * n, "messages": [0] * n}
    for m in trace.messages:
        if m.label.startswith(label):
            out["bytes_sent"][m.src] += m.nbytes
            out["bytes_received"][m.dst] += m.nbytes
            out["messages"][m.src] += 1
    return out


def load_imbalance(loads):
    """max / mean of per-rank (or per-expert) loads: 1.0 is perfect balance, p is all on one."""
    a = np.asarray(loads, dtype=np.float64)
    if a.size == 0 or a.sum() == 0:
        return 1.0
    return float(a.max() / a.mean())


__all__ = ["ExpertParallelMoE", "check_expert_split", "ep_wire_bytes", "ep_traffic", "load_imbalance"]
