"""PowerSGD: rank-r compression by one step of power iteration (Vogels, Karimireddy and
Jaggi 2019, "PowerSGD: practical low-rank gradient compression", Algorithm 1).

For each gradient matrix M (n x m; a conv kernel or any tensor of 2+ dims is viewed as
shape[0] x rest) and a Q (m x r) kept from the previous step (warm start):

    P  = M Q                 (n x r)    all-reduce (mean) over ranks
    P^ = orthogonalize(P)               Gram-Schmidt on the columns
    Q  = M^T P^              (m x r)    all-reduce (mean) over ranks
    M~ = P^ Q^T                         the rank-r approximation of the mean gradient

Both messages are plain dense arrays of the same shape on every rank, and the mean of
the ranks' Q is the Q of the mean M (P^ is shared): so PowerSGD is *all-reduce
friendly*, unlike top-k or QSGD. Wire: r (n + m) values instead of n m. Exact when the
mean gradient has rank <= r. Tensors of one dimension (biases) are sent dense, as in
the paper. Q is reused as the next step's starting point, so over steps the iteration
converges to the top singular vectors (the warm start is what makes one power step a
good approximation). It is biased: use it with error feedback (the paper does;
:class:`mlscale.compress.ErrorFeedback`), which this package wraps by default.

The two all-reduces are packed: one for every tensor's P, one for every Q (and the
dense tensors): ``compress_many(tensors, all_reduce)`` does the first, the exchange
(mlscale.train.CompressedDataParallel) the second, then ``on_aggregate`` keeps Q.
"""
from __future__ import annotations

import numpy as np

from ..nn._xp import array_module
from .base import Compressor, Payload, seed_for


def orthogonalize_gram_schmidt(P, eps=None):
    """Columns of P made orthonormal, left to right (the paper's choice), in place.
    Each column is projected off the previous ones twice: once leaves rounding errors
    along them that, for a column (nearly) dependent on the previous ones, are as large
    as what is left, and normalizing would blow them up. ``eps`` guards the division
    (as torch's PowerSGD hook does)."""
    xp = array_module(P)
    eps = (1e-8 if P.dtype == np.float32 else 1e-16) if eps is None else eps
    for j in range(P.shape[1]):
        col = P[:, j]
        for _ in range(2 if j else 0):       # project twice: "twice is enough" (Kahan, Parlett)
            col -= P[:, :j] @ (P[:, :j].T @ col)
        col /= xp.linalg.norm(col) + eps
    return P


def orthogonalize_qr(P):
    """The same span from a Householder QR (numerically sturdier; columns may differ from
    Gram-Schmidt's in sign only)."""
    return array_module(P).linalg.qr(P)[0]


ORTHOGONALIZE = {"gram_schmidt": orthogonalize_gram_schmidt, "qr": orthogonalize_qr}


class PowerSGD(Compressor):
    """Rank-``rank`` PowerSGD. ``warm_start=False`` draws a fresh Q every step."""

    exchange = "all_reduce"

    def __init__(self, rank=2, seed=0, warm_start=True, orthogonalize="gram_schmidt"):
        super().__init__(seed)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"PowerSGD: rank={rank!r} must be an int >= 1 (the rank r of P Q^T)")
        if orthogonalize not in ORTHOGONALIZE:
            raise ValueError(f"PowerSGD: orthogonalize={orthogonalize!r}; use one of {sorted(ORTHOGONALIZE)}")
        self.r = int(rank)
        self.warm_start = bool(warm_start)
        self.orthogonalize = orthogonalize
        self._Q = {}                               # key -> Q (m x r), the warm start

    @property
    def name(self):
        return f"PowerSGD r={self.r}"

    def _matrix(self, x, key):
        M = x.reshape(x.shape[0], -1)
        n, m = M.shape
        if self.r > min(n, m):
            raise ValueError(f"PowerSGD: rank={self.r} > min{(n, m)} = {min(n, m)}, the smaller side "
                             f"of tensor {key!r} {tuple(x.shape)} viewed as a matrix; use rank <= "
                             f"{min(n, m)} (or leave such small tensors uncompressed)")
        return M

    def _start_Q(self, key, m, dtype, xp):
        Q = self._Q.get(key) if self.warm_start else None
        if Q is None:                              # the same on every rank: the seed is shared
            step = 0 if self.warm_start else self._next_step(key)
            rng = np.random.default_rng(seed_for(self.seed, "powersgd", key, step))
            Q = xp.asarray(rng.standard_normal((m, self.r)).astype(dtype))
        return Q

    def compress_many(self, tensors, all_reduce=None):
        out, mats = {}, {}
        for key, x in tensors.items():
            if x.ndim < 2:                          # biases: dense, all-reduced with the Qs
                out[key] = Payload({"values": x.reshape(-1).copy()}, x.shape, x.dtype)
                continue
            M = self._matrix(x, key)
            mats[key] = (M, M @ self._start_Q(key, M.shape[1], x.dtype, array_module(x)))
        if mats and all_reduce is not None:        # one all-reduce for every P
            xp = array_module(next(iter(mats.values()))[1])
            flat = all_reduce(xp.concatenate([P.reshape(-1) for _, P in mats.values()]))
            o = 0
            for key, (M, P) in mats.items():
                mats[key] = (M, flat[o:o + P.size].reshape(P.shape).copy())
                o += P.size
        ortho = ORTHOGONALIZE[self.orthogonalize]
        for key, (M, P) in mats.items():
            P = ortho(P)
            Q = M.T @ P                             # (m, r): this rank's Q, before averaging
            out[key] = Payload({"P": P, "Q": Q}, tensors[key].shape, tensors[key].dtype,
                               {"rank": self.r}, reduced=("P",))
        out = {key: out[key] for key in tensors}    # the callers' order
        if all_reduce is None:                      # a world of one: this Q is the average
            self.on_aggregate(out)
        return out

    def decompress(self, payload):
        if "values" in payload.arrays:
            return payload.arrays["values"].reshape(payload.shape)
        return (payload.arrays["P"] @ payload.arrays["Q"].T).reshape(payload.shape)

    def on_aggregate(self, payloads):
        if self.warm_start:
            for key, p in payloads.items():
                if "Q" in p.arrays:
                    self._Q[key] = p.arrays["Q"].copy()

    def flops(self, shape):
        if len(shape) < 2:
            return 0.0
        n = shape[0]
        m = int(np.prod(shape[1:]))
        # M Q, M^T P, P Q^T (2 n m r each) and Gram-Schmidt (about 2 n r^2)
        return 6.0 * n * m * self.r + 2.0 * n * self.r * self.r
