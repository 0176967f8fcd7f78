"""Token + position embedding and the language-model head of the GPT (transformer.py).

    emb = Embedding(vocab_size, seq_len, d)    # (batch, seq) ints -> (batch, seq, d): wte[idx] + wpe[:seq]
    head = LMHead(d, vocab_size)               # (batch, seq, d) -> (batch, seq, vocab): x W, W (d, vocab)
    head = LMHead(d, vocab_size, tied_to=emb)  # x wte^T: no parameter of its own (Press and Wolf 2017)

Embedding backward scatters dout into the rows of ``wte`` that were looked up
(``np.add.at``: a token seen twice gets both gradients; ``cupyx.scatter_add`` on a GPU)
and sums dout over the batch into ``wpe[:seq]``; token ids have no gradient (it returns
None). The tied head adds its weight gradient into the embedding's ``wte`` gradient.
"""
import numpy as np

from ._xp import array_module, is_shape_only
from .attention import matmul
from .layers import Layer


class Embedding(Layer):
    """Token + position embedding: (batch, seq) integer ids -> (batch, seq, d).

    Float ids (a pipeline casts its input to the model dtype) are accepted when whole."""

    def __init__(self, vocab_size, seq_len, d, init_std=0.02):
        self.vocab_size, self.seq_len, self.d, self.init_std = int(vocab_size), int(seq_len), int(d), init_std
        self.params = self.grads = None
        self._idx = None

    def param_shapes(self):
        return {"wte": (self.vocab_size, self.d), "wpe": (self.seq_len, self.d)}

    def init_params(self, rng):
        return {k: rng.normal(0.0, self.init_std, size=s) for k, s in self.param_shapes().items()}

    def forward(self, idx):
        xp = array_module(idx)
        if idx.ndim != 2:
            raise ValueError(f"Embedding: token ids must be (batch, seq), got shape {tuple(idx.shape)}")
        shape_only = is_shape_only(xp)  # mlscale.meta: shapes and dtypes are checked, values cannot be
        if idx.dtype.kind == "f":
            if not shape_only and not bool((idx == xp.round(idx)).all()):
                raise TypeError("Embedding: token ids must be whole numbers, got non-integral floats")
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: token ids must be integers, got dtype {idx.dtype}")
        t = idx.shape[1]
        if t > self.seq_len:
            raise ValueError(f"Embedding: a sequence of {t} tokens is longer than seq_len={self.seq_len}: "
                             f"cut it or build the model with GPTConfig(seq_len={t})")
        if idx.size and not shape_only and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(f"Embedding: token ids must lie in [0, {self.vocab_size}), got min {int(idx.min())}, "
                             f"max {int(idx.max())}: vocab_size too small for the tokenizer?")
        self._idx = idx
        return self.params["wte"][idx] + self.params["wpe"][:t]  # (batch, seq, d)

    def backward(self, dout):  # (batch, seq, d); token ids have no gradient: returns None
        xp = array_module(dout)
        idx, t = self._idx, self._idx.shape[1]
        _scatter_add(xp, self.grads["wte"], idx.reshape(-1), dout.reshape(-1, self.d))
        self.grads["wpe"][:t] += dout.sum(axis=0)
        return None

    def __repr__(self):
        return f"Embedding({self.vocab_size}, {self.seq_len}, {self.d})"


def _scatter_add(xp, target, rows, values):
    """``target[rows] += values`` with repeated rows summed (np.add.at; cupyx.scatter_add)."""
    if xp is np or is_shape_only(xp):
        xp.add.at(target, rows, values)
    else:
        import cupyx

        cupyx.scatter_add(target, rows, values)


class LMHead(Layer):
    """logits = x W, W (d, vocab); tied: logits = x wte^T using the Embedding's ``wte``."""

    def __init__(self, d, vocab_size, tied_to=None, init_std=0.02):
        self.d, self.vocab_size, self.tied_to, self.init_std = int(d), int(vocab_size), tied_to, init_std
        self.params = self.grads = None
        self._x = None

    def param_shapes(self):
        return {} if self.tied_to is not None else {"weight": (self.d, self.vocab_size)}

    def init_params(self, rng):
        return {k: rng.normal(0.0, self.init_std, size=s) for k, s in self.param_shapes().items()}

    def forward(self, x):  # (batch, seq, d) -> (batch, seq, vocab)
        self._x = x
        w = self.tied_to.params["wte"].T if self.tied_to is not None else self.params["weight"]
        return matmul(x.reshape(-1, self.d), w).reshape(x.shape[:-1] + (self.vocab_size,))

    def backward(self, dout):
        x2, d2 = self._x.reshape(-1, self.d), dout.reshape(-1, self.vocab_size)
        if self.tied_to is not None:
            wte = self.tied_to.params["wte"]
            self.tied_to.grads["wte"] += matmul(d2.T, x2)  # (vocab, d)
            return matmul(d2, wte).reshape(self._x.shape)
        self.grads["weight"] += matmul(x2.T, d2)
        return matmul(d2, self.params["weight"].T).reshape(self._x.shape)

    def flops_per_sample(self, backward=True):
        return 0  # set per model by GPT (needs seq_len)

    def __repr__(self):
        return f"LMHead({self.d}, {self.vocab_size}, tied={self.tied_to is not None})"



__all__ = ["Embedding", "LMHead"]
