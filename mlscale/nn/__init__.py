"""Tiny models for NumPy and CuPy alike, with flat parameter/gradient buffers.

    from mlscale.nn import MLP, SGD
    model = MLP([64, 64, 10], seed=0)
    opt = SGD(model, lr=0.1, momentum=0.9)
    for Xb, yb in mlscale.data.batches(X, y, batch_size=64, seed=0, epoch=0):
        model.loss_and_grad(Xb, yb)
        opt.step()

Layers (``Linear``, ``ReLU``, ``GELU``, ``Tanh``) carry their backward beside their
forward; ``Sequential``/``MLP`` lay every parameter into one flat ``params`` buffer and
every gradient into one flat ``grads`` buffer (see model.py for why). Optimizers are
imported lazily: they call the fused kernels of ``mlscale.ops``.

The transformer (``GPT``, ``GPTConfig``; transformer.py) is a ``Sequential`` too, built
from ``Embedding``, ``Block`` (``LayerNorm``/``RMSNorm`` from norms.py,
``CausalSelfAttention`` from attention.py, ``FeedForward``) and ``LMHead``; the
attention core and the norms are also plain functions on arrays
(``attention_forward/backward`` on (batch, heads, seq, head_dim),
``layernorm_forward/backward``), for tensor- and sequence-parallel layers to reuse.
``saved_nbytes(layer)`` measures the activations a layer keeps for backward;
flops.py counts model FLOPs, MFU, model-state and activation memory. ``MoE`` (moe.py) is
a mixture-of-experts MLP: top-k router, capacity and dropped tokens, load-balancing loss.
"""
from ._xp import array_module, is_cupy  # noqa: F401
from .layers import ACTIVATIONS, GELU, Layer, Linear, ReLU, Tanh, softmax_cross_entropy  # noqa: F401
from .model import MLP, Bucket, ParamSlot, Sequential  # noqa: F401
from .optim import SGD, Adam, AdamW, Optimizer  # noqa: F401
from .module import Module, clear_cache, saved_arrays, saved_nbytes  # noqa: F401
from .norms import (LayerNorm, RMSNorm, layernorm_backward, layernorm_forward, rmsnorm_backward,  # noqa: F401
                    rmsnorm_forward)
from .attention import (CausalSelfAttention, Dense, attention_backward, attention_forward, merge_heads,  # noqa: F401
                        split_heads, split_qkv)
from .embedding import Embedding, LMHead  # noqa: F401
from .transformer import GPT, Block, FeedForward, GPTConfig  # noqa: F401
from .moe import MoE, Experts, Routing, capacity  # noqa: F401
from .flops import (activation_bytes_per_layer, bytes_per_param, matmul_params, mfu, model_flops,  # noqa: F401
                    measure_activation_bytes, model_state_bytes, model_state_table)

__all__ = ["Layer", "Linear", "ReLU", "GELU", "Tanh", "ACTIVATIONS", "softmax_cross_entropy",
           "Sequential", "MLP", "Bucket", "ParamSlot", "SGD", "Adam", "AdamW", "Optimizer",
           "array_module", "is_cupy", "Module", "saved_nbytes", "saved_arrays", "clear_cache",
           "LayerNorm", "RMSNorm", "layernorm_forward", "layernorm_backward", "rmsnorm_forward",
           "rmsnorm_backward", "CausalSelfAttention", "Dense", "attention_forward", "attention_backward",
           "split_qkv", "split_heads", "merge_heads", "GPT", "GPTConfig", "Block", "Embedding",
           "FeedForward", "LMHead", "model_flops", "mfu", "matmul_params", "model_state_bytes",
           "model_state_table", "bytes_per_param", "activation_bytes_per_layer", "measure_activation_bytes",
           "MoE", "Experts", "Routing", "capacity"]
