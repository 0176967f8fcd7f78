"""DP-FedAvg's Gaussian mechanism (McMahan, Ramage, Talwar, Zhang 2018, ICLR,
"Learning Differentially Private Recurrent Language Models", Algorithm 1).

Each client's update is clipped to L2 norm S (``clip_update``), so one client moves the
sum by at most S (the sensitivity); the server adds N(0, (z S)^2 I) to the SUM of the
clipped updates (z = ``noise_multiplier``) and divides by the number of clients it
expected (the fixed-denominator estimator). Uniform client weights: the paper's capped
weights w_k = min(n_k / w_hat, 1) are not done.

Not done here: the privacy accountant (moments accountant / RDP) that turns z, the
sampling fraction q and the number of rounds into (epsilon, delta).
"""
from __future__ import annotations

import numpy as np

from .aggregate import pack, unpack


def _check_clip(func, clip_norm):
    bad = isinstance(clip_norm, bool) or not np.isscalar(clip_norm)
    if bad or not clip_norm > 0 or not np.isfinite(clip_norm):
        raise ValueError(f"{func}: clip_norm S must be a finite number > 0, got {clip_norm!r}")


def update_norm(arrays):
    """L2 norm of one client's update over all its arrays (float64)."""
    arrays = [arrays] if hasattr(arrays, "shape") else list(arrays)
    return float(np.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))


def clip_update(arrays, clip_norm):
    """x * min(1, S / ||x||): unchanged if ||x|| <= S, else scaled to norm S exactly
    (to the dtype's rounding). One array or a list (the global norm over all of them)."""
    _check_clip("clip_update", clip_norm)
    single = hasattr(arrays, "shape")
    arrs = [arrays] if single else list(arrays)
    norm = update_norm(arrs)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = [a if scale == 1.0 else (np.asarray(a, dtype=np.float64) * scale).astype(a.dtype) for a in arrs]
    return out[0] if single else out


def gaussian_noise(shape_like, std, seed):
    """N(0, std^2) arrays shaped like ``shape_like`` (one array or a list), float64, seeded."""
    rng = np.random.default_rng(seed)
    arrs = [shape_like] if hasattr(shape_like, "shape") else list(shape_like)
    out = [rng.normal(0.0, std, size=np.shape(a)) for a in arrs]
    return out[0] if hasattr(shape_like, "shape") else out


def dp_fedavg(results, clip_norm, noise_multiplier, seed, denominator=None):
    """(sum_k clip(x_k, S) + N(0, (z S)^2 I)) / denominator  (McMahan et al. 2018).

    results: ``[(arrays, num_examples), ...]`` (num_examples is ignored: uniform weights).
    denominator: the number of clients expected per round (q W in the paper); default
    the number that reported. seed: the noise's seed (one per round). Returns the
    arrays in the clients' dtype.
    """
    _check_clip("dp_fedavg", clip_norm)
    if not np.isscalar(noise_multiplier) or not noise_multiplier >= 0:
        raise ValueError(f"dp_fedavg: noise_multiplier z must be >= 0, got {noise_multiplier!r}")
    layers, _, single = unpack(results, "dp_fedavg")
    denom = len(layers) if denominator is None else denominator
    if not denom > 0:
        raise ValueError(f"dp_fedavg: denominator must be > 0, got {denominator!r}")
    clipped = [clip_update(c, clip_norm) for c in layers]
    noise = gaussian_noise(layers[0], noise_multiplier * clip_norm, seed)
    out = []
    for j in range(len(layers[0])):
        s = np.sum([np.asarray(c[j], dtype=np.float64) for c in clipped], axis=0) + noise[j]
        out.append((s / denom).astype(layers[0][j].dtype))
    return pack(out, single)
