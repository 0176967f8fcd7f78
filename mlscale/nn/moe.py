"""Mixture of experts: a top-k router in front of E expert MLPs, with capacity, dropped
tokens and the load-balancing loss; backward written by hand beside each forward.

    layer = MoE(d=16, d_ff=32, num_experts=4, top_k=2, capacity_factor=1.25)
    model = Sequential([layer], seed=0, dtype=np.float64)
    y = model.forward(x)                    # (tokens, d); layer.aux_loss, layer.tokens_per_expert
    model.backward(dy)                      # adds d(task + aux_loss + z_loss)/d params

The layer (Shazeer et al. 2017; GShard, Lepikhin et al. 2020; Switch Transformer, Fedus
et al. 2021; Mixtral, Jiang et al. 2024), on tokens x (T, d):

1. router: logits z = x W_r (W_r of shape (d, E), no bias), probs p = softmax(z);
2. top-k: each token picks the k experts of largest p (ties: lowest index first); gate
   g_j = p_{e_j}, or with ``renormalize=True`` g_j = p_{e_j} / sum_i p_{e_i} (Mixtral,
   GShard's top-2; for k = 1 the gate is then 1 and the router learns only from the aux loss);
3. capacity (GShard section 2.2): each expert takes at most
   ``C = ceil(capacity_factor * k * T_g / E)`` tokens of a group of T_g tokens
   (``capacity_factor=None``: no limit). The slots are filled in a fixed order: every
   token's FIRST choice, in token order, then every token's second choice, in token
   order, and so on (GShard's top-2: first choices before second ones). An assignment
   (token, choice) that finds its expert full is DROPPED: it adds nothing, and a token
   whose every choice is dropped gets y = 0 (the residual connection around the layer
   carries it);
4. experts: ``E_e(x) = gelu(x W1_e + b1_e) W2_e + b2_e`` (d -> d_ff -> d), and
   ``y_t = sum over kept choices j of g_{t,j} E_{e_{t,j}}(x_t)``;
5. auxiliary losses, added to the objective by backward (their gradients flow into W_r):
   load balancing (Switch Transformer eq. 4) ``L_aux = alpha E sum_e f_e P_e`` with f_e the
   fraction of the group's tokens whose FIRST choice is e (before drops) and P_e the mean
   router probability of e; router z-loss (ST-MoE, Zoph et al. 2022, eq. 5)
   ``L_z = beta (1/T_g) sum_t (log sum_e exp z_{t,e})^2``.

Groups. ``groups=G`` cuts the T tokens into G equal contiguous groups; capacity, drops,
f_e and P_e are counted in each group on its own (GShard's "groups"), and the layer's
losses are the MEAN over the groups. Expert parallelism (mlscale.parallel.expert) makes
each rank's tokens one group: ``MoE(groups=ep)`` on the ranks' tokens concatenated in
rank order is its single-device oracle, dropped tokens included.

Gradients. Top-k choices, capacity and f_e are piecewise constant (no gradient); the
gates carry d y / d g = <dy, E_e(x)> back through (the renormalisation and) the softmax
to W_r, with dL_aux/dp_{t,e} = alpha E f_e / T_g and dL_z/dz_t = 2 beta lse_t p_t / T_g.
"""
import math

import numpy as np

from ._xp import array_module
from .layers import Layer, Linear
from .module import Module
from .transformer import gelu_backward, gelu_forward


def _relu_backward(dout, h):
    return dout * (h > 0)


ACTIVATION_FNS = {"gelu": (gelu_forward, gelu_backward), "relu": (lambda h: h * (h > 0), _relu_backward)}


def capacity(tokens, num_experts, top_k, capacity_factor):
    """Slots per expert for a group of ``tokens``: ``ceil(capacity_factor * k * T / E)``
    (GShard; Switch Transformer section 2.2), or ``k * T`` (no drops) for None."""
    if capacity_factor is None:
        return int(top_k) * int(tokens)
    return int(math.ceil(capacity_factor * top_k * tokens / num_experts - 1e-9))  # 1e-9: 5.0000000001 is 5


def _topk(xp, p, k):
    """(T, k) indices of the k largest entries of each row, largest first, ties to the lower
    index (NumPy's stable sort; CuPy's sort breaks exact ties its own way)."""
    order = xp.argsort(-p, axis=1, kind="stable") if xp is np else xp.argsort(-p, axis=1)
    return order[:, :k]


class Routing:
    """The router's decisions for ONE group of tokens, and the backward of the gates.

    Fields: ``probs`` (T, E); ``idx``, ``gates``, ``keep`` (T, k): expert, gate and
    whether the assignment found a slot; ``rows[e]``/``choice[e]``: the token and choice
    of each kept assignment of expert e, in slot order; ``aux_loss``, ``z_loss`` of the
    group (unscaled); ``routed``/``kept`` (E,): assignments per expert before and after
    the capacity cut."""

    def __init__(self, logits, top_k, capacity_factor, renormalize, aux_coef, z_coef):
        xp = array_module(logits)
        T, E = logits.shape
        k = int(top_k)
        m = logits.max(axis=1, keepdims=True)
        ex = xp.exp(logits - m)
        s = ex.sum(axis=1, keepdims=True)
        self.probs = ex / s  # (T, E)
        self.lse = (m + xp.log(s))[:, 0]  # (T,)
        self.idx = _topk(xp, self.probs, k)  # (T, k)
        top = xp.take_along_axis(self.probs, self.idx, axis=1)  # (T, k)
        self.topsum = top.sum(axis=1, keepdims=True)
        self.gates = top / self.topsum if renormalize else top
        self.renormalize, self.k, self.T, self.E = bool(renormalize), k, T, E
        self.capacity = capacity(T, E, k, capacity_factor)
        # slot of each assignment: choice-major, token order (o = j T + t), GShard's order
        flat = self.idx.T.reshape(-1)  # (k T,)
        onehot = (flat[:, None] == xp.arange(E)[None, :]).astype(np.int64)  # (k T, E)
        pos = (xp.cumsum(onehot, axis=0) * onehot).sum(axis=1) - 1  # (k T,)
        keep = pos < self.capacity
        self.keep = keep.reshape(k, T).T  # (T, k)
        self.routed = onehot.sum(axis=0)  # (E,)
        self.kept = (onehot * keep[:, None]).sum(axis=0)
        o = xp.nonzero(keep)[0]
        o = o[xp.argsort(flat[o] * (k * T) + o)]  # by expert, then slot (the keys are distinct)
        bounds = np.concatenate([[0], np.cumsum([int(c) for c in self.kept.tolist()])])
        self.rows = [o[bounds[e]:bounds[e + 1]] % T for e in range(E)]
        self.choice = [o[bounds[e]:bounds[e + 1]] // T for e in range(E)]
        first = (self.idx[:, 0][:, None] == xp.arange(E)[None, :]).sum(axis=0)
        self.f = first / T  # fraction of first choices, (E,)
        self.P = self.probs.mean(axis=0)  # mean router probability, (E,)
        self.aux_coef, self.z_coef = float(aux_coef), float(z_coef)
        self.aux_loss = self.aux_coef * E * float((self.f * self.P).sum())
        self.z_loss = self.z_coef * float((self.lse ** 2).mean())

    def backward(self, dgates, scale=1.0):
        """d objective / d logits, from dgates (T, k) (zero where dropped) and the two
        losses (weighted by ``scale``: 1/groups)."""
        xp = array_module(dgates)
        if self.renormalize:  # g_j = p_j / S: dp_j = (dg_j - sum_i dg_i g_i) / S
            dtop = (dgates - (dgates * self.gates).sum(axis=1, keepdims=True)) / self.topsum
        else:
            dtop = dgates
        dprobs = xp.zeros_like(self.probs)
        dprobs[xp.arange(self.T)[:, None], self.idx] = dtop  # the k experts of a row differ
        dprobs += (scale * self.aux_coef * self.E / self.T) * self.f[None, :]
        p = self.probs
        dlogits = p * (dprobs - (dprobs * p).sum(axis=1, keepdims=True))  # softmax backward
        if self.z_coef:
            dlogits += (scale * self.z_coef * 2.0 / self.T) * self.lse[:, None] * p
        return dlogits


class Experts(Layer):
    """E expert MLPs ``gelu(x W1_e + b1_e) W2_e + b2_e``, stacked: w1 (E, d, d_ff),
    b1 (E, d_ff), w2 (E, d_ff, d), b2 (E, d). ``first``/``total``: these are experts
    first .. first+E-1 of ``total`` (expert parallelism); init draws all ``total`` (as
    ``nn.Linear``: uniform +-1/sqrt(fan_in)) and keeps its slice, so every split of the
    experts over ranks starts from the same values as one device."""

    def __init__(self, num_experts, d, d_ff, activation="gelu", first=0, total=None):
        if activation not in ACTIVATION_FNS:
            raise ValueError(f"MoE activation={activation!r}: use one of {sorted(ACTIVATION_FNS)}")
        self.E, self.d, self.d_ff = int(num_experts), int(d), int(d_ff)
        self.first, self.total = int(first), int(total if total is not None else num_experts)
        self.activation = activation
        self.params = self.grads = None
        self._cache = None

    def param_shapes(self):
        E, d, f = self.E, self.d, self.d_ff
        return {"w1": (E, d, f), "b1": (E, f), "w2": (E, f, d), "b2": (E, d)}

    def init_params(self, rng):
        sl = slice(self.first, self.first + self.E)
        out = {}
        for name, shape in self.param_shapes().items():
            fan_in = self.d if name in ("w1", "b1") else self.d_ff
            bound = 1.0 / math.sqrt(fan_in)
            out[name] = rng.uniform(-bound, bound, size=(self.total,) + shape[1:])[sl]
        return out

    def forward_list(self, xs):
        """``[E_e(xs[e]) for e]``: xs[e] (n_e, d) the rows of expert e."""
        act = ACTIVATION_FNS[self.activation][0]
        P, outs, cache = self.params, [], []
        for e, x in enumerate(xs):
            h = x @ P["w1"][e] + P["b1"][e]  # (n_e, d_ff)
            a = act(h)
            outs.append(a @ P["w2"][e] + P["b2"][e])  # (n_e, d)
            cache.append((x, h, a))
        self._cache = cache
        return outs

    def backward_list(self, douts):
        """Add the expert grads for ``douts[e]`` (n_e, d); return ``[dx_e for e]``."""
        if self._cache is None:
            raise RuntimeError("Experts.backward_list called before forward_list")
        dact = ACTIVATION_FNS[self.activation][1]
        P, G, dxs = self.params, self.grads, []
        for e, (do, (x, h, a)) in enumerate(zip(douts, self._cache)):
            G["w2"][e] += a.T @ do
            G["b2"][e] += do.sum(axis=0)
            dh = dact(do @ P["w2"][e].T, h)  # (n_e, d_ff)
            G["w1"][e] += x.T @ dh
            G["b1"][e] += dh.sum(axis=0)
            dxs.append(dh @ P["w1"][e].T)
        return dxs

    def __repr__(self):
        return f"Experts({self.E} of {self.total}, d={self.d}, d_ff={self.d_ff}, {self.activation})"


def check_moe_args(d, d_ff, num_experts, top_k, capacity_factor, where="MoE"):
    """ValueError naming the argument unless the sizes make a valid MoE layer."""
    for name, v in (("d", d), ("d_ff", d_ff), ("num_experts", num_experts), ("top_k", top_k)):
        if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 1:
            raise ValueError(f"{where}: {name}={v!r} must be a whole number >= 1")
    if top_k > num_experts:
        raise ValueError(f"{where}: top_k={top_k} > num_experts={num_experts}: a token cannot pick more experts "
                         f"than there are; use top_k <= {num_experts}")
    if capacity_factor is not None and not capacity_factor > 0:
        raise ValueError(f"{where}: capacity_factor={capacity_factor!r} must be > 0 (1.0 to 2.0 is usual), "
                         "or None for no capacity limit")


def flat_tokens(x, d, where):
    """x (..., d) as (T, d), with a clear error for a wrong last axis."""
    if x.ndim < 2 or x.shape[-1] != d:
        raise ValueError(f"{where}(d={d}) got input of shape {tuple(x.shape)}: expected (tokens, {d}) or "
                         f"(batch, seq, {d})")
    if x.size == 0:
        raise ValueError(f"{where} got no tokens (input of shape {tuple(x.shape)}): give every rank at least one")
    return x.reshape(-1, d)


class MoE(Module):
    """Mixture-of-experts MLP on (..., d) (see the module docstring for the formulas).

    num_experts E, top_k k (1: Switch; 2: GShard, Mixtral), capacity_factor (None: no
    drops), renormalize (top-k gates summing to 1), aux_loss_coef alpha (Switch: 0.01),
    z_loss_coef beta (ST-MoE: 0.001), groups (capacity and losses counted per group).

    After forward: ``aux_loss``, ``z_loss`` (floats, already in the objective backward
    differentiates), ``tokens_per_expert`` (E,) kept assignments, ``routed_per_expert``
    (E,) before the capacity cut, ``dropped`` assignments cut, ``dropped_tokens`` tokens
    with every choice cut, ``capacity`` slots per expert per group.
    """

    def __init__(self, d, d_ff, num_experts, top_k=1, capacity_factor=1.25, renormalize=False,
                 aux_loss_coef=0.01, z_loss_coef=0.0, groups=1, activation="gelu"):
        check_moe_args(d, d_ff, num_experts, top_k, capacity_factor)
        if isinstance(groups, bool) or not hasattr(groups, "__index__") or int(groups) < 1:
            raise ValueError(f"MoE: groups={groups!r} must be a whole number >= 1")
        self.d, self.d_ff, self.E, self.k = int(d), int(d_ff), int(num_experts), int(top_k)
        self.capacity_factor, self.renormalize, self.groups = capacity_factor, bool(renormalize), int(groups)
        self.aux_loss_coef, self.z_loss_coef = float(aux_loss_coef), float(z_loss_coef)
        self.router = Linear(d, num_experts, bias=False)
        self.experts = Experts(num_experts, d, d_ff, activation)
        self._routes = self._plan = self._outs = None

    def children(self):
        return {"router": self.router, "experts": self.experts}

    def forward(self, x):  # (..., d)
        xp = array_module(x)
        x2 = flat_tokens(x, self.d, "MoE")
        T, G = x2.shape[0], self.groups
        if T % G:
            raise ValueError(f"MoE(groups={G}): {T} tokens cannot be cut into {G} equal groups; "
                             f"use a token count divisible by {G}")
        logits = self.router.forward(x2)  # (T, E)
        n = T // G
        self._routes = [Routing(logits[g * n:(g + 1) * n], self.k, self.capacity_factor, self.renormalize,
                                self.aux_loss_coef, self.z_loss_coef) for g in range(G)]
        # expert e's rows: group by group, each in slot order
        rows = [xp.concatenate([g * n + r.rows[e] for g, r in enumerate(self._routes)]) for e in range(self.E)]
        choice = [xp.concatenate([r.choice[e] for r in self._routes]) for e in range(self.E)]
        gates = xp.concatenate([r.gates for r in self._routes])  # (T, k)
        self._plan = (x.shape, T, rows, choice, gates)
        self._outs = self.experts.forward_list([x2[r] for r in rows])
        y = xp.zeros_like(x2)
        for e in range(self.E):  # a token appears at most once per expert
            y[rows[e]] += gates[rows[e], choice[e]][:, None] * self._outs[e]
        self._stats()
        return y.reshape(x.shape)

    def _stats(self):
        rs = self._routes
        self.aux_loss = sum(r.aux_loss for r in rs) / len(rs)
        self.z_loss = sum(r.z_loss for r in rs) / len(rs)
        self.tokens_per_expert = sum(np.asarray(r.kept.tolist()) for r in rs)
        self.routed_per_expert = sum(np.asarray(r.routed.tolist()) for r in rs)
        self.dropped = int(self.routed_per_expert.sum() - self.tokens_per_expert.sum())
        self.dropped_tokens = sum(int((~r.keep).all(axis=1).sum()) for r in rs)
        self.capacity = rs[0].capacity

    def backward(self, dout):
        if self._plan is None:
            raise RuntimeError("MoE.backward called before forward")
        xp = array_module(dout)
        shape, T, rows, choice, gates = self._plan
        dy = dout.reshape(T, self.d)
        dgates = xp.zeros_like(gates)
        douts = []
        for e in range(self.E):
            dye = dy[rows[e]]  # (n_e, d)
            dgates[rows[e], choice[e]] = (dye * self._outs[e]).sum(axis=1)
            douts.append(gates[rows[e], choice[e]][:, None] * dye)
        dxs = self.experts.backward_list(douts)
        dx = xp.zeros_like(dy)
        for e in range(self.E):
            dx[rows[e]] += dxs[e]
        n, G = T // self.groups, self.groups
        dlogits = xp.concatenate([r.backward(dgates[g * n:(g + 1) * n], 1.0 / G) for g, r in enumerate(self._routes)])
        dx += self.router.backward(dlogits)
        return dx.reshape(shape)

    def __repr__(self):
        return (f"MoE(d={self.d}, d_ff={self.d_ff}, num_experts={self.E}, top_k={self.k}, "
                f"capacity_factor={self.capacity_factor}, groups={self.groups})")


__all__ = ["MoE", "Experts", "Routing", "capacity", "check_moe_args", "flat_tokens", "ACTIVATION_FNS"]
