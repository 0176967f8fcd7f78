"""Error feedback (memory): add back what compression dropped (Seide et al. 2014;
Stich, Cordonnier and Jaggi 2018; Karimireddy et al. 2019, "Error feedback fixes
SignSGD"; Vogels et al. 2019 for PowerSGD).

    c_t = x_t + e_{t-1};   send C(c_t);   e_t = c_t - decompress(C(c_t))

so sent_t + e_t = x_t + e_{t-1}, and summed over steps

    sum_t sent_t + e_T = sum_t x_t

(exactly for sparsifiers, where sent and residual never overlap; up to rounding for
quantizers): nothing is lost, only delayed. A biased compressor (top-k, sign, PowerSGD)
with error feedback converges like SGD (Stich et al. 2018); without it, top-k never
sends the small coordinates and sign SGD can diverge.

Error feedback needs a *contractive* compressor, ||C(x) - x|| <= (1 - delta) ||x||
(Stich et al. 2018; Karimireddy et al. 2019): top-k, sign and PowerSGD are. QSGD with
s levels is unbiased but not contractive when s < sqrt(n) (its error can exceed ||x||):
fed back, the error grows every step and training diverges. Unbiased compressors need
no feedback; ``make(..., error_feedback="auto")`` leaves them without.

For TopK and Sign the residual is updated inside the fused kernels of mlscale.ops
(``compress_ef``); for the others it is computed here from the decompressed payload.
For PowerSGD the residual is this rank's own error, x + e - P^ Q_rank^T (the paper's
Algorithm 2): the ranks' ``sent`` average to the aggregated update.
"""
from __future__ import annotations

from math import prod

from .base import Compressor, zeros_like


class ErrorFeedback(Compressor):
    """Wrap ``compressor`` with a per-tensor residual (``residuals[key]``)."""

    def __init__(self, compressor):
        if not isinstance(compressor, Compressor):
            raise TypeError(f"ErrorFeedback wraps a Compressor, got {type(compressor).__name__}")
        if isinstance(compressor, ErrorFeedback):
            raise TypeError("ErrorFeedback(ErrorFeedback(...)): the compressor already has error feedback")
        super().__init__()
        self.inner = compressor
        self.residuals = {}

    name = property(lambda self: f"{self.inner.name} + EF")
    exchange = property(lambda self: self.inner.exchange)

    def compress_many(self, tensors, all_reduce=None):
        out, rest = {}, {}
        for key, x in tensors.items():
            r = self.residuals.get(key)
            if r is None:
                r = self.residuals[key] = zeros_like(x)
            if hasattr(self.inner, "compress_ef"):          # fused: r updated in the kernel
                out[key] = self.inner.compress_ef(x, r, key)
            else:
                rest[key] = x + r
        if rest:
            payloads = self.inner.compress_many(rest, all_reduce)
            for key, p in payloads.items():
                r = self.residuals[key]
                r[...] = rest[key] - self.inner.decompress(p)
                out[key] = p
        return {key: out[key] for key in tensors}

    def decompress(self, payload):
        return self.inner.decompress(payload)

    def combine(self, decoded):
        return self.inner.combine(decoded)

    def on_aggregate(self, payloads):
        self.inner.on_aggregate(payloads)

    def bind(self, rank):
        self.inner.bind(rank)
        return super().bind(rank)

    def flops(self, shape):
        return self.inner.flops(shape) + 2.0 * prod(shape)      # x + e, and e - sent

    def residual_norm(self):
        """sqrt(sum over tensors of ||e||^2): how much is waiting to be sent."""
        return float(sum(float((r.astype("float64") ** 2).sum()) for r in self.residuals.values())) ** 0.5
