"""Counting a transformer: model FLOPs and MFU, model-state memory, activation memory.

    model_flops(cfg, tokens)                 # 6 N tokens + 12 L h s tokens (PaLM, appendix B)
    mfu(cfg, tokens_per_second, peak_flops)  # model FLOPs per second / peak
    model_state_bytes(num_params)            # {"params": 2N, "grads": 2N, "fp32_params": 4N, "adam": 8N, ...}
    model_state_table()                      # the Ultra-Scale Playbook's 1B/7B/70B/405B table
    activation_bytes_per_layer(s, b, h, a)   # Korthikanti et al. 2022: s b h (34 + 5 a s / h)

**Model FLOPs** (Chowdhery et al. 2022, PaLM, appendix B; the Ultra-Scale Playbook):
a training step costs 6 FLOPs per parameter per token (2 forward, 4 backward) for the
matmuls with weights, plus the attention scores and their use, ``12 L h s`` per token
(forward Q K^T and P V, 4 s h per layer, times 3 with backward), counted over the
full s x s matrix as the references do (the causal half is not subtracted). N counts the
weights that take part in matmuls: every block's Q, K, V, output and MLP matrices and
the LM head (h x vocab; the same matrix as the token embedding when tied); embedding
lookups, biases and norms are not FLOPs of a matmul. With those conventions
``model_flops`` equals the matmul FLOPs this package's GPT actually does in a step
(tests/test_nn_flops.py counts them). **MFU** = model FLOPs per second / peak FLOP/s: the
recomputation FLOPs do not count (that would be hardware FLOPs utilisation, HFU).

**Model state** with mixed precision and Adam (ZeRO, Rajbhandari et al. 2020; the
Playbook): bf16 parameters (2 B) and gradients (2 B), fp32 master parameters (4 B) and
Adam's m and v (4 + 4 B): 16 B per parameter; accumulating the gradients in fp32 adds
4 B: 20 B. For 1B/7B/70B/405B parameters: 16/20, 112/140, 1120/1400, 6480/8100 GB.

**Activations per layer** (Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", section 4, with dropout, 16-bit values, 1-byte masks):
``s b h (34 + 5 a s / h)`` bytes; selective recomputation ``34 s b h``; full ``2 s b h``.
``activation_bytes_per_layer(..., dropout=False, bytes_per_value=...)`` gives the same
count for a model without dropout (this package's): values ``16 s b h + a s^2 b``, or
``16 s b h`` (selective), ``s b h`` (full), times the bytes per value.
"""
from .transformer import RECOMPUTE, GPTConfig



def _cfg(config):
    if not isinstance(config, GPTConfig):
        raise TypeError(f"expected a GPTConfig, got {type(config).__name__}")
    return config


def matmul_params(config):
    """N of the FLOP count: L (4 h^2 + 2 h d_ff) + h vocab (weights that enter matmuls)."""
    c = _cfg(config)
    return c.num_layers * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_ff) + c.d_model * c.vocab_size


def model_flops(config, tokens, seq_len=None):
    """FLOPs of forward + backward over ``tokens`` tokens: ``6 N tokens + 12 L h s tokens``.

    seq_len: the sequence length s of those tokens (default ``config.seq_len``)."""
    c = _cfg(config)
    if tokens < 0:
        raise ValueError(f"model_flops: tokens={tokens!r} must be >= 0")
    s = c.seq_len if seq_len is None else int(seq_len)
    return 6 * matmul_params(c) * tokens + 12 * c.num_layers * c.d_model * s * tokens


def mfu(config, tokens_per_second, peak_flops, num_devices=1, seq_len=None):
    """Model FLOPs utilisation: model_flops per second over ``num_devices * peak_flops``.

    On ``sim``: tokens_per_second = tokens trained / virtual seconds of the step, and
    peak_flops the rate the NetworkModel charges compute at (``NetworkModel.flops``)."""
    if not peak_flops > 0 or num_devices < 1:
        raise ValueError(f"mfu: peak_flops={peak_flops!r} must be > 0 and num_devices={num_devices!r} >= 1")
    if tokens_per_second < 0:
        raise ValueError(f"mfu: tokens_per_second={tokens_per_second!r} must be >= 0")
    return model_flops(config, tokens_per_second, seq_len) / (num_devices * peak_flops)


def model_state_bytes(num_params, fp32_grad_accum=False, param_bytes=2, grad_bytes=2):
    """Bytes of parameters, gradients and optimizer state for mixed-precision Adam.

    Returns ``{"params", "grads", "fp32_params", "adam_m", "adam_v", "fp32_grads", "total"}``;
    ``fp32_grads`` is 0 unless ``fp32_grad_accum`` (an fp32 copy to accumulate into)."""
    if num_params < 0:
        raise ValueError(f"model_state_bytes: num_params={num_params!r} must be >= 0")
    n = num_params
    out = {"params": param_bytes * n, "grads": grad_bytes * n, "fp32_params": 4 * n, "adam_m": 4 * n,
           "adam_v": 4 * n, "fp32_grads": 4 * n if fp32_grad_accum else 0}
    out["total"] = sum(out.values())
    return out


def bytes_per_param(fp32_grad_accum=False):
    """16 with mixed-precision Adam (2 + 2 + 12), 20 with fp32 gradient accumulation."""
    return model_state_bytes(1, fp32_grad_accum)["total"]


PLAYBOOK_SIZES = {"1B": 1e9, "7B": 7e9, "70B": 70e9, "405B": 405e9}


def model_state_table(sizes=None, unit=1e9):
    """Rows ``(name, num_params, GB without, GB with fp32 grad accumulation)`` (GB = 1e9 B):
    the Ultra-Scale Playbook's table (1B: 16/20, 7B: 112/140, 70B: 1120/1400, 405B: 6480/8100)."""
    sizes = PLAYBOOK_SIZES if sizes is None else sizes
    return [(name, n, model_state_bytes(n)["total"] / unit, model_state_bytes(n, True)["total"] / unit)
            for name, n in sizes.items()]


def activation_bytes_per_layer(seq, batch, hidden, heads, recompute=None, dropout=True, bytes_per_value=2):
    """Activation bytes one transformer layer keeps for backward (Korthikanti et al. 2022).

    dropout=True, 16-bit: ``s b h (34 + 5 a s / h)``, selective ``34 s b h``, full ``2 s b h``.
    dropout=False: values ``16 s b h + a s^2 b`` (selective: ``16 s b h``; full: ``s b h``),
    each ``bytes_per_value`` bytes. Masks are 1 byte per element."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute={recompute!r}: use one of {RECOMPUTE}")
    s, b, h, a, v = seq, batch, hidden, heads, bytes_per_value
    if recompute == "full":
        return v * s * b * h
    linear = v * 16 * s * b * h + (2 * s * b * h if dropout else 0)  # dropout masks after attn and MLP
    if recompute == "selective":
        return linear
    quadratic = (2 * v + 1) * a * s * s * b if dropout else v * a * s * s * b  # P (+ dropout mask and output)
    return linear + quadratic




def measure_activation_bytes(config, batch, dtype="float16", seed=0):
    """Per recomputation mode, the bytes one block keeps after a forward of (batch,
    seq_len) tokens, measured (:func:`saved_nbytes`) beside the formula without dropout
    and Korthikanti's published one: ``{mode: (measured, formula_no_dropout, paper)}``.

    The measured bytes exceed the no-dropout formula by the norms' per-row statistics
    only (2 s b values per LayerNorm, s b per RMSNorm; none under full recomputation)."""
    import numpy as np

    from .module import saved_nbytes
    from .transformer import GPT

    c = _cfg(config)
    s, h, a = c.seq_len, c.d_model, c.num_heads
    x = np.random.default_rng(seed).standard_normal((batch, s, h)).astype(dtype)
    out = {}
    for mode in RECOMPUTE:
        cfg = GPTConfig(**{**c.__dict__, "num_layers": 1, "recompute": mode})
        block = GPT(cfg, seed=seed, dtype=dtype).blocks[0]
        block.forward(x)
        v = np.dtype(dtype).itemsize
        out[mode] = (saved_nbytes(block), activation_bytes_per_layer(s, batch, h, a, mode, False, v),
                     activation_bytes_per_layer(s, batch, h, a, mode))
    return out


__all__ = ["matmul_params", "model_flops", "mfu", "model_state_bytes", "bytes_per_param", "model_state_table",
           "PLAYBOOK_SIZES", "activation_bytes_per_layer", "measure_activation_bytes"]
