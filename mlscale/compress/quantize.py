"""Quantization: send every element, in fewer bits.

- :class:`QSGD` (Alistarh et al. 2017): stochastic rounding of |x_i| / ||x|| to s
  levels, unbiased, E[Q(x)] = x, variance <= min(n / s^2, sqrt(n) / s) ||x||^2.
  Wire: ||x|| + one int8 sign*level per element = n + 4 bytes (4x less than fp32; the
  paper's Elias coding of the levels sends fewer, this sends plain int8). Each rank draws
  its own random bits (seed, rank, tensor, step), so averaging over ranks also averages
  the rounding noise.
- :class:`Sign` (1-bit SGD, Seide et al. 2014; signSGD, Bernstein et al. 2018): one bit
  per element and one scale, ``mean(|x|)`` (Seide et al. reconstruct with per-column means of
  the positive and negative parts; one scale per tensor is the simpler EF-SignSGD form,
  Karimireddy et al. 2019). Wire: ceil(n / 8) + 4 bytes, 32x less. Biased: use it with
  error feedback. ``majority_vote=True``: signSGD with majority vote (Bernstein et al.
  2018): the update is the sign of the sum of the ranks' signs (a tie gives 0), scaled
  by the mean of their scales.

Kernels: mlscale.ops.qsgd_quantize / qsgd_dequantize, sign_compress / sign_decompress.
"""
from __future__ import annotations

from ..nn._xp import array_module
from .base import Compressor, Payload, seed_for, _ops



class QSGD(Compressor):
    """QSGD with s = ``levels`` levels (1 <= s <= 127)."""

    exchange = "all_gather"      # each rank's norm differs: int8 levels do not add
    unbiased = True              # so it needs no error feedback (and few levels break it)
    flops_per_element = 6.0      # the norm, a random number, a rounding

    def __init__(self, levels=127, seed=0):
        super().__init__(seed)
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= _ops().qsgd.MAX_LEVELS:
            raise ValueError(f"QSGD: levels={levels!r} must be an int in [1, {_ops().qsgd.MAX_LEVELS}] "
                             "(s quantization levels, sent as int8)")
        self.levels = levels

    @property
    def name(self):
        return f"QSGD s={self.levels}"

    def _compress(self, x, key):
        xp = array_module(x)
        seed = seed_for(self.seed, "qsgd", self.comm_rank, key, self._next_step(key))
        nrm, q = _ops().qsgd_quantize(x, self.levels, seed=seed)
        return Payload({"norm": xp.asarray([nrm], dtype=x.dtype), "q": q.reshape(-1)},
                       x.shape, x.dtype, {"levels": self.levels})

    def decompress(self, payload):
        a = payload.arrays
        nrm = float(a["norm"][0])
        return _ops().qsgd_dequantize(nrm, a["q"], self.levels, dtype=payload.dtype).reshape(payload.shape)


class Sign(Compressor):
    """1-bit compression: the signs, bit-packed, and one scale (mean |x|) per tensor."""

    exchange = "all_gather"      # each rank's scale differs: bits do not add
    flops_per_element = 4.0      # |x + r|, a compare, a pack

    def __init__(self, majority_vote=False):
        super().__init__()
        self.majority_vote = bool(majority_vote)

    @property
    def name(self):
        return "signSGD majority vote" if self.majority_vote else "1-bit (sign)"

    def _compress(self, x, key):
        return self.compress_ef(x, array_module(x).zeros_like(x), key)

    def compress_ef(self, x, residual, key=""):
        """sign(x + residual) with error feedback, fused (ops.sign_compress): the residual
        is updated in place to x + residual - sent."""
        xp = array_module(x)
        bits, scale = _ops().sign_compress(x, residual)
        return Payload({"scale": xp.asarray([scale], dtype=x.dtype), "bits": bits}, x.shape, x.dtype)

    def decompress(self, payload):
        a = payload.arrays
        return _ops().sign_decompress(a["bits"], float(a["scale"][0]), payload.shape, dtype=payload.dtype)

    def combine(self, decoded):
        """The mean; with majority_vote, sign(sum of signs) * mean scale."""
        if not self.majority_vote:
            return super().combine(decoded)
        xp = array_module(decoded[0])
        votes = sum(xp.sign(d) for d in decoded)
        scale = sum(float(xp.abs(d).reshape(-1)[0]) for d in decoded) / len(decoded)
        return (xp.sign(votes) * scale).astype(decoded[0].dtype)
