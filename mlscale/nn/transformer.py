"""A GPT-style decoder (Radford et al. 2018/2019; Karpathy's nanoGPT), layer by layer,
each backward beside its forward, in ``Sequential``'s flat parameter/gradient buffers.

    from mlscale.nn import GPT, GPTConfig, Adam
    cfg = GPTConfig(vocab_size=32, seq_len=16, d_model=32, num_heads=4, num_layers=2)
    model = GPT(cfg, seed=0, dtype=np.float64)       # xp="cupy" for a GPU
    logits = model.forward(idx)                      # idx (batch, seq) ints -> (batch, seq, vocab)
    loss = model.loss_and_grad(idx, targets)         # targets (batch, seq) ints: mean CE over tokens
    Adam(model, lr=1e-3).step()

``model.layers`` is ``[Embedding, Block, ..., Block, norm, LMHead]``:

- ``Embedding``: ``wte`` (vocab, d) token and ``wpe`` (seq_len, d) position embeddings;
  ``x = wte[idx] + wpe[:seq]``, (batch, seq) ints -> (batch, seq, d).
- ``Block`` (pre-norm, GPT-2): ``x = x + attn(ln1(x))``; ``x = x + mlp(ln2(x))``, with
  ``attn`` a :class:`CausalSelfAttention` and ``mlp`` a :class:`FeedForward`
  (``fc1`` d -> d_ff, GELU, ``fc2`` d_ff -> d). Parameter names inside a block:
  ``ln1.weight, ln1.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight,
  attn.proj.bias, ln2.*, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias``.
- the final norm (``LayerNorm`` or ``RMSNorm``), then ``LMHead``: logits = x W, W (d, vocab),
  or, tied (``tie_embeddings=True``, GPT-2), logits = x wte^T with no parameter of its own
  (its gradient is added into the embedding's). Tied weights live in the first and the
  last layer: keep them on one rank (a pipeline needs ``tie_embeddings=False``).

Init as GPT-2: weights normal(0, 0.02), the residual projections (attn.proj, mlp.fc2)
normal(0, 0.02 / sqrt(2 L)), biases 0, norm weights 1. No dropout (nanoGPT's default for
pre-training small models): the activation memory below has no dropout masks.

Recomputation (``GPTConfig.recompute``; Korthikanti et al. 2022): None keeps everything;
"selective" keeps Q, K, V but not the attention probabilities, recomputed in backward;
"full" keeps only each block's input and reruns the whole block forward in backward.
Gradients are bitwise those without recomputation; ``block.recompute_flops`` counts the
extra forward FLOPs. Activation memory per block (elements, :func:`saved_nbytes`):
16 s b h + a s^2 b without recomputation (Korthikanti's 34 s b h + 5 a s^2 b bytes at
2 bytes each, less the dropout masks (2 s b h bytes) and the softmax dropout mask and
output (3 a s^2 b bytes)), 16 s b h with selective, s b h with full; plus each norm's
per-row statistics (2 s b elements per LayerNorm, s b per RMSNorm) in the first two.
"""
from dataclasses import dataclass, field
import math

import numpy as np

from ._xp import array_module, fused, is_shape_only, to_xp
from .attention import CausalSelfAttention, Dense
from .embedding import Embedding, LMHead
from .layers import GELU, softmax_cross_entropy
from .model import Sequential
from .module import Module, clear_cache
from .norms import NORMS

RECOMPUTE = (None, "selective", "full")


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT. ``d_ff`` defaults to 4 d_model; ``norm``: "layernorm" or "rmsnorm"."""
    vocab_size: int
    seq_len: int
    d_model: int
    num_heads: int
    num_layers: int
    d_ff: int = field(default=None)
    norm: str = "layernorm"
    bias: bool = True
    tie_embeddings: bool = False
    recompute: str = None

    def __post_init__(self):
        for k in ("vocab_size", "seq_len", "d_model", "num_heads", "num_layers"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"GPTConfig: {k}={v!r} must be a whole number >= 1")
        if self.d_model % self.num_heads:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig: norm={self.norm!r} unknown, use one of {sorted(NORMS)}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"GPTConfig: recompute={self.recompute!r}, use one of {RECOMPUTE}")

    @property
    def head_dim(self):
        return self.d_model // self.num_heads


def _gelu_tanh(xp, xa):
    """tanh(sqrt(2/pi) (x + 0.044715 x^3)), with x^3 as x * x * x (np.power is slow)."""
    inner = xa * xa
    inner *= GELU.K
    inner += 1.0
    inner *= xa
    inner *= GELU.C
    return xp.tanh(inner, out=inner)


@fused("gelu_forward")
def gelu_forward(x):
    """GELU, tanh form (as :class:`mlscale.nn.GELU`), computed in float32 for 16-bit x."""
    xp = array_module(x)
    xa = x.astype(np.float32, copy=False) if x.dtype.itemsize < 4 else x
    y = _gelu_tanh(xp, xa)
    y += 1.0
    y *= xa
    y *= 0.5
    return y.astype(x.dtype, copy=False)


@fused("gelu_backward")
def gelu_backward(dout, x):
    """d GELU / dx times dout; recomputes tanh from x (so forward keeps only x):
    ``0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)``."""
    xp = array_module(x)
    xa = x.astype(np.float32, copy=False) if x.dtype.itemsize < 4 else x
    t = _gelu_tanh(xp, xa)
    d = xa * xa
    d *= 3.0 * GELU.K
    d += 1.0
    d *= xa
    d *= GELU.C * 0.5
    d *= 1.0 - t * t
    t += 1.0
    t *= 0.5
    d += t
    d *= dout
    return d.astype(x.dtype, copy=False)


class FeedForward(Module):
    """``fc2(gelu(fc1(x)))`` on (..., d); keeps x (by fc1), fc1's output and gelu's output."""

    def __init__(self, d, d_ff, bias=True, proj_std=0.02):
        self.fc1 = Dense(d, d_ff, bias=bias)
        self.fc2 = Dense(d_ff, d, bias=bias, init_std=proj_std)
        self._h = None

    def children(self):
        return {"fc1": self.fc1, "fc2": self.fc2}

    def forward(self, x):
        self._h = self.fc1.forward(x)  # (..., d_ff)
        return self.fc2.forward(gelu_forward(self._h))

    def backward(self, dout):
        return self.fc1.backward(gelu_backward(self.fc2.backward(dout), self._h))


class Block(Module):
    """Pre-norm transformer block ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; (batch, seq, d)."""

    def __init__(self, cfg):
        self.cfg, self.recompute = cfg, cfg.recompute
        proj_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.ln1, self.ln2 = NORMS[cfg.norm](cfg.d_model), NORMS[cfg.norm](cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.num_heads, bias=cfg.bias, proj_std=proj_std,
                                        keep_probs=cfg.recompute != "selective")
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, bias=cfg.bias, proj_std=proj_std)
        self.full_recompute_flops = 0
        self._x = None

    def children(self):
        return {"ln1": self.ln1, "attn": self.attn, "ln2": self.ln2, "mlp": self.mlp}

    def _forward(self, x):
        x = x + self.attn.forward(self.ln1.forward(x))
        return x + self.mlp.forward(self.ln2.forward(x))

    def forward(self, x):  # (batch, seq, d)
        out = self._forward(x)
        if self.recompute == "full":
            for c in self.children().values():
                clear_cache(c)
            self._x = x  # all that is kept
        return out

    def backward(self, dout):  # (batch, seq, d)
        if self.recompute == "full":
            if self._x is None:
                raise RuntimeError("Block.backward called before forward")
            b, t, _ = self._x.shape
            self._forward(self._x)  # the same operations: bitwise the same activations
            self.full_recompute_flops += self.forward_flops(b, t)
        dx = dout + self.ln2.backward(self.mlp.backward(dout))
        dx = dx + self.ln1.backward(self.attn.backward(dx))
        if self.recompute == "full":
            for c in self.children().values():
                clear_cache(c)
            self._x = None
        return dx

    @property
    def recompute_flops(self):
        """Extra forward FLOPs spent recomputing activations so far (selective or full)."""
        return self.full_recompute_flops + self.attn.recompute_flops

    def forward_flops(self, batch, seq):
        """Matmul FLOPs of one forward: 2 b s (4 d^2 + 2 d d_ff) + 4 b s^2 d (Q K^T and P V)."""
        d, f = self.cfg.d_model, self.cfg.d_ff
        return 2 * batch * seq * (4 * d * d + 2 * d * f) + 4 * batch * seq * seq * d

    def flops_per_sample(self, backward=True):
        """Per sequence of seq_len tokens; backward = 2 x forward."""
        return self.forward_flops(1, self.cfg.seq_len) * (3 if backward else 1)

    def __repr__(self):
        c = self.cfg
        return f"Block(d={c.d_model}, heads={c.num_heads}, d_ff={c.d_ff}, norm={c.norm}, recompute={c.recompute})"


class GPT(Sequential):
    """A GPT decoder as a ``Sequential``: ``[Embedding, Block x L, norm, LMHead]``.

    forward(idx (batch, seq) ints) -> logits (batch, seq, vocab); loss_and_grad(idx,
    targets) is the mean cross-entropy over every token (PyTorch's F.cross_entropy on
    the flattened logits). seed, dtype, xp as ``Sequential``; dtype float16 computes in
    float16 (float32 accumulation in matmuls, softmax and norms)."""

    def __init__(self, config, seed=0, dtype=np.float32, xp=None):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb = Embedding(cfg.vocab_size, cfg.seq_len, cfg.d_model)
        layers = [emb] + [Block(cfg) for _ in range(cfg.num_layers)] + [NORMS[cfg.norm](cfg.d_model)]
        layers.append(LMHead(cfg.d_model, cfg.vocab_size, tied_to=emb if cfg.tie_embeddings else None))
        super().__init__(layers, seed=seed, dtype=dtype, xp=xp)

    def _bind(self):
        super()._bind()
        if self.config.tie_embeddings:  # after copy()/to(): the head follows this model's embedding
            self.layers[-1].tied_to = self.layers[0]

    def _check_input(self, idx):
        idx = to_xp(idx, self.xp) if not hasattr(idx, "dtype") or is_shape_only(self.xp) else idx
        if (array_module(idx) is np) != (self.xp is np):
            raise TypeError("GPT: the token ids and the model live on different devices: move one of them "
                            "(model.to('cupy'|'numpy') or cupy.asarray(idx) / idx.get())")
        return idx

    @property
    def blocks(self):
        return self.layers[1:-2]

    def loss_and_grad(self, idx, targets, zero_grad=True, **backward_kwargs):
        """Forward, mean token cross-entropy against ``targets`` (batch, seq), backward; returns the loss."""
        if zero_grad:
            self.zero_grad()
        logits = self.forward(idx)  # (batch, seq, vocab)
        loss, dlogits = softmax_cross_entropy(logits, to_xp(targets, self.xp))
        self.backward(dlogits, **backward_kwargs)
        return loss

    def loss(self, idx, targets):
        """Mean token cross-entropy, no gradients."""
        return softmax_cross_entropy(self.forward(idx), to_xp(targets, self.xp))[0]

    def flops_per_sample(self, backward=True):
        """Matmul FLOPs per sequence of seq_len tokens (blocks and LM head; lookups are free)."""
        c = self.config
        head = 2 * c.seq_len * c.d_model * c.vocab_size
        return sum(b.flops_per_sample(backward) for b in self.blocks) + head * (3 if backward else 1)


__all__ = ["GPTConfig", "GPT", "Block", "FeedForward", "gelu_forward", "gelu_backward",
           "RECOMPUTE"]
