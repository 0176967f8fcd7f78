"""Mixed precision in FSDP (fsdp.py), as PyTorch FSDP2's ``MixedPrecisionPolicy(param_dtype,
reduce_dtype)``: master shards and Adam state in the model's dtype, the gathered units
(compute and the all-gathers) in ``param_dtype``, the gradients reduce-scattered in
``reduce_dtype`` and added into master-dtype gradient shards (Micikevicius et al. 2018;
Zhao et al. 2023, section 4.3; ZeRO's 2 + 2 + 12 bytes per parameter).

    policy = MixedPrecisionPolicy(param_dtype=np.float16, reduce_dtype=np.float32)
    fsdp = FSDP(comm, nn.MLP(sizes, dtype=np.float32), make_adam, stage=3, mixed_precision=policy)

Formats. NumPy has no bfloat16, so the policy takes real NumPy dtypes only: float16
(IEEE half: max 65504, so the loss is scaled: ``nn.precision.LossScaler``, overflow
steps skipped and counted, the scale halved) and float32; with float64 masters,
``param_dtype=float32`` is the exact-arithmetic stand-in for "bf16 over fp32" that the
tests use (same halving of bytes and memory, no range problem). Emulated bfloat16 for
one device is ``nn.MixedPrecision(model, "bfloat16", ...)``.

Per step (stage 3; stage 2 keeps the ``param_dtype`` params replicated and all-gathers
them, cast from the updated master shards, after the step):

1. before a unit's forward/backward: cast my master chunk to ``param_dtype`` and
   all-gather it: (p-1)/p * N_u * itemsize(param_dtype) bytes per rank, half of fp32's for fp16;
2. backward into a ``param_dtype`` buffer, cast to ``reduce_dtype``, reduce-scatter (mean),
   add into my master-dtype gradient shard;
3. ``step``: with a loss scaler, unscale my shards, agree over the ranks whether any is
   inf/NaN (an all-reduce of one flag: every rank holds only its shard), skip the step and
   halve the scale if so; else Adam on the master shards.

Memory per rank (``mp_memory_by_kind``): "master" my chunk in the master dtype,
"optimizer" Adam's m and v of it, "grads" my master-dtype gradient shard plus the unit
buffers in flight in ``param_dtype``, "params" the gathered units in ``param_dtype``
(stage 2: the whole replicated model in ``param_dtype``).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np

from .zero import zero_memory_by_kind


class MixedPrecisionPolicy(NamedTuple):
    """``param_dtype``: compute and all-gather dtype (np.float16, np.float32);
    ``reduce_dtype``: the reduce-scatter's dtype (None: ``param_dtype``); ``loss_scaler``:
    an ``nn.precision.LossScaler`` (FSDP works on a copy, ``fsdp.scaler``), None for the
    default (``LossScaler()`` with float16, no scaling otherwise), or False for none."""
    param_dtype: object
    reduce_dtype: object = None
    loss_scaler: object = None


def _float_dtype(d, what):
    if isinstance(d, str) and d.lower() in ("bfloat16", "bf16"):
        raise ValueError(f"MixedPrecisionPolicy: {what}={d!r}: NumPy has no bfloat16; use np.float16 (with loss "
                         f"scaling) or np.float32 (over float64 masters); nn.MixedPrecision emulates bf16 on one "
                         f"device")
    try:
        dt = np.dtype(d)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(f"MixedPrecisionPolicy: {what}={d!r} is not a float dtype; use np.float16 or np.float32")
    return dt


def resolve_policy(policy, master_dtype, stage):
    """``(param_dtype, reduce_dtype, LossScaler or None)`` of ``policy`` for a model of
    ``master_dtype`` under ZeRO ``stage``; None without a policy. Clear errors otherwise."""
    if policy is None:
        return None
    if not isinstance(policy, MixedPrecisionPolicy):
        raise TypeError(f"FSDP mixed_precision={policy!r}: pass MixedPrecisionPolicy(param_dtype=np.float16, "
                        f"reduce_dtype=np.float32) or None")
    if stage not in (2, 3):
        raise ValueError(f"FSDP mixed_precision needs stage 2 or 3 (master shards), got stage={stage}; for plain "
                         f"data parallel use nn.MixedPrecision(..., reduce_grads=...)")
    param = _float_dtype(policy.param_dtype, "param_dtype")
    reduce = param if policy.reduce_dtype is None else _float_dtype(policy.reduce_dtype, "reduce_dtype")
    master = np.dtype(master_dtype)
    if param.itemsize > master.itemsize:
        raise ValueError(f"FSDP mixed_precision: param_dtype={param.name} is wider than the model's (master) "
                         f"dtype {master.name}; build the model in the master dtype (e.g. dtype=np.float32)")
    scaler = policy.loss_scaler
    if scaler is None:
        from ..nn.precision import LossScaler
        scaler = LossScaler() if param == np.float16 else None
    elif scaler is False:
        scaler = None
    else:  # each rank its own (on sim every rank gets the same object): read it as fsdp.scaler
        scaler = copy.deepcopy(scaler)
    return param, reduce, scaler


def mp_memory_by_kind(unit_sizes, world_size, rank, stage, param_bytes, master_bytes, prefetch=True, overlap=True):
    """Peak bytes ``{"params", "grads", "optimizer", "master"}`` FSDP holds under a mixed
    precision policy: ``zero_memory_by_kind`` in elements, each kind in its dtype."""
    el = zero_memory_by_kind(unit_sizes, world_size, rank, stage, 1, 2, prefetch, overlap)
    mine = el["optimizer"] // 2
    params = sum(unit_sizes) if stage == 2 else el["params"] - mine
    return {"params": params * param_bytes, "grads": mine * master_bytes + (el["grads"] - mine) * param_bytes,
            "optimizer": el["optimizer"] * master_bytes, "master": mine * master_bytes}


def found_inf(comm, shards, algorithm="ring"):
    """True on every rank if any rank's gradient shard holds inf/NaN (one all-reduce of a flag)."""
    xp = comm.xp
    mine = any(not bool(xp.isfinite(g).all()) for g in shards)
    flag = comm.all_reduce(xp.asarray([1.0 if mine else 0.0]), op="max", algorithm=algorithm)
    return bool(flag[0] > 0)


__all__ = ["MixedPrecisionPolicy", "resolve_policy", "mp_memory_by_kind", "found_inf"]
