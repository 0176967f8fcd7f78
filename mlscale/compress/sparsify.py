"""Sparsification: send k of n elements.

- :class:`TopK`: the k largest |x_i| (Aji and Heafield 2017; Lin et al. 2018, Deep
  Gradient Compression; Stich, Cordonnier and Jaggi 2018, "Sparsified SGD with memory").
  Wire: k int32 indices + k values = 8k bytes in fp32, against 4n dense: n / (2k) x less.
  Biased: needs error feedback (:class:`mlscale.compress.ErrorFeedback`) to converge well.
- :class:`RandomK`: k elements chosen at random. With a seed shared by every rank
  (seed, tensor key, step) each rank draws the *same* indices, so they need not be sent:
  wire = k values = 4k bytes (n / k x less), and the payloads of different ranks have the
  same support, so they can be all-reduced. Unscaled (like top-k with memory); the
  unbiased variant multiplies by n/k and has variance (n/k - 1)||x||^2.

The selection and scatter are mlscale.ops.topk_compress / topk_decompress (NumPy, numba,
numba-CUDA, CuPy); these classes add the interface, per-tensor k and the byte count.
"""
from __future__ import annotations

import numpy as np

from ..nn._xp import array_module
from .base import Compressor, Payload, check_ratio, k_for, seed_for, _ops



class TopK(Compressor):
    """Keep the k = ceil(ratio * n) (or min(k, n)) largest |x_i| of every tensor."""

    exchange = "all_gather"
    flops_per_element = 8.0      # |x + r|, a selection of several passes, a gather

    def __init__(self, ratio=None, k=None):
        super().__init__()
        self.ratio_, self.k = check_ratio("TopK", ratio, k)

    @property
    def name(self):
        return f"top-k {self.ratio_:.3g}" if self.k is None else f"top-{self.k}"

    def _compress(self, x, key):
        return self.compress_ef(x, array_module(x).zeros_like(x), key)

    def compress_ef(self, x, residual, key=""):
        """Top-k of x + residual with error feedback, fused (ops.topk_compress): the
        residual is updated in place to what was not sent."""
        k = k_for(self.ratio_, self.k, x.size)
        idx, values = _ops().topk_compress(x, k, residual)
        return Payload({"indices": idx, "values": values}, x.shape, x.dtype, {"k": k})

    def decompress(self, payload):
        a = payload.arrays
        return _ops().topk_decompress(a["indices"], a["values"], payload.shape)


class RandomK(Compressor):
    """Keep k random elements of every tensor, drawn from a seed every rank shares."""

    exchange = "all_reduce"      # same indices on every rank: the values add up
    flops_per_element = 1.0      # draw + gather: cheap

    def __init__(self, ratio=None, k=None, seed=0):
        super().__init__(seed)
        self.ratio_, self.k = check_ratio("RandomK", ratio, k)

    @property
    def name(self):
        return f"random-k {self.ratio_:.3g}" if self.k is None else f"random-{self.k}"

    def indices(self, n, key, step):
        """The indices for tensor ``key`` at ``step``: the same on every rank (shared seed)."""
        rng = np.random.default_rng(seed_for(self.seed, "randomk", key, step))
        k = k_for(self.ratio_, self.k, n)
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int32)

    def _compress(self, x, key):
        xp = array_module(x)
        idx = xp.asarray(self.indices(x.size, key, self._next_step(key)))
        values = x.reshape(-1)[idx]
        # the indices are in meta: every rank computes them from the seed, none are sent
        return Payload({"values": values}, x.shape, x.dtype, {"indices": idx})

    def decompress(self, payload):
        return _ops().topk_decompress(payload.meta["indices"], payload.arrays["values"], payload.shape)
