"""FedAvg's aggregation rule as a pure function on ``list[(arrays, num_examples)]``.

Flower's ``aggregate.py`` style: a client's result is ``(arrays, num_examples)`` where
``arrays`` is one array (a flat ``model.params`` or update) or a list of arrays (one per
tensor); the rule returns the same structure. McMahan et al. 2017 (FedAvg), Algorithm 1:

    w_{t+1} = sum_k (n_k / n) w_{t+1}^k,     n = sum_k n_k

over the clients k that reported this round. Two versions, kept and tested equal:
``fedavg_reference`` (NumPy, float64, the specification) and ``fedavg`` (the fused
``mlscale.ops.weighted_sum`` kernel: one pass over the k inputs per tensor).
"""
from __future__ import annotations

import numpy as np


def unpack(results, rule="fedavg"):
    """Check ``results`` and return ``(layers, counts, single)``.

    layers: one list of arrays per client (every client the same shapes), counts: the
    num_examples as a float64 array, single: True when clients sent one bare array.
    """
    if isinstance(results, tuple) and len(results) == 2 and not isinstance(results[0], tuple):
        raise TypeError(f"{rule}: pass a LIST of (arrays, num_examples) pairs, one per client, "
                        f"e.g. [(params_a, 60), (params_b, 40)]; got one pair")
    results = list(results)
    if not results:
        raise ValueError(f"{rule}: no client results; pass at least one (arrays, num_examples) pair")
    layers, counts = [], []
    single = None
    for k, item in enumerate(results):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"{rule}: results[{k}] must be a pair (arrays, num_examples), "
                            f"got {type(item).__name__}")
        arrays, n = item
        is_single = hasattr(arrays, "shape")
        if single is None:
            single = is_single
        elif single != is_single:
            raise TypeError(f"{rule}: results[{k}] sends {'one array' if is_single else 'a list'} "
                            f"but results[0] {'one array' if single else 'a list'}; use one form")
        arrays = [arrays] if is_single else list(arrays)
        if isinstance(n, bool) or not np.isscalar(n) or not np.isfinite(n) or n < 0:
            raise ValueError(f"{rule}: results[{k}] has num_examples={n!r}; it must be a number >= 0")
        if k and len(arrays) != len(layers[0]):
            raise ValueError(f"{rule}: results[{k}] has {len(arrays)} arrays, results[0] has "
                             f"{len(layers[0])}: every client must send the same model")
        for j, a in enumerate(arrays):
            if not hasattr(a, "dtype") or a.dtype.kind != "f":
                raise TypeError(f"{rule}: results[{k}] array {j} must be a float array, "
                                f"got {type(a).__name__} {getattr(a, 'dtype', '')}")
            if k and a.shape != layers[0][j].shape:
                raise ValueError(f"{rule}: results[{k}] array {j} has shape {a.shape}, results[0] "
                                 f"has {layers[0][j].shape}: every client must send the same model")
        layers.append(arrays)
        counts.append(float(n))
    return layers, np.asarray(counts, dtype=np.float64), single


def pack(arrays, single):
    """The rule's output in the clients' form: one array, or a list."""
    return arrays[0] if single else arrays


def _weights(rule, counts):
    total = counts.sum()
    if total <= 0:
        raise ValueError(f"{rule}: the clients report {total:g} examples in all; FedAvg weighs by "
                         "num_examples, so at least one must be > 0")
    return counts / total


def fedavg_reference(results):
    """sum_k n_k x_k / sum_k n_k per array, in float64, cast back (the specification)."""
    layers, counts, single = unpack(results, "fedavg_reference")
    w = _weights("fedavg_reference", counts)
    out = []
    for j in range(len(layers[0])):
        acc = np.zeros(layers[0][j].shape, dtype=np.float64)
        for k in range(len(layers)):
            acc += w[k] * np.asarray(layers[k][j], dtype=np.float64)
        out.append(acc.astype(layers[0][j].dtype))
    return pack(out, single)


def fedavg(results, impl="auto"):
    """FedAvg (McMahan et al. 2017): the num_examples-weighted mean of the clients' arrays.

    results: ``[(arrays, num_examples), ...]``; arrays one array or a list of arrays.
    One fused ``mlscale.ops.weighted_sum`` per array (weights n_k / n in the arrays' dtype),
    so it equals ``fedavg_reference`` to the dtype's rounding. impl: as ``weighted_sum``.
    """
    from ..ops import weighted_sum

    layers, counts, single = unpack(results, "fedavg")
    w = _weights("fedavg", counts)
    out = [weighted_sum([layers[k][j] for k in range(len(layers))], w, impl=impl)
           for j in range(len(layers[0]))]
    return pack(out, single)


def mean(results):
    """The plain (unweighted) mean of the clients' arrays: FedAvg with every n_k = 1."""
    layers, _, single = unpack(results, "mean")
    return fedavg([(pack(c, single), 1) for c in layers])
