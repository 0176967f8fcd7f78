"""Gradient compression: send fewer bytes per step, and account for every one of them.

    from mlscale import compress
    comp = compress.ErrorFeedback(compress.TopK(ratio=0.01))
    payload = comp.compress(grad, key="0.weight")
    comp.nbytes(payload), comp.ratio(payload), comp.decompress(payload)

=================  ==========================  ===================  ===========  ==============
compressor         paper                       wire bytes (fp32)    unbiased?    exchanged by
=================  ==========================  ===================  ===========  ==============
Identity ("none")  -                           4n                   yes          all_reduce
TopK               Lin et al. 2018 (DGC)       8k (idx + value)     no: use EF   all_gather
RandomK            Stich et al. 2018           4k (shared seed)     no: use EF   all_reduce
QSGD               Alistarh et al. 2017        n + 4                yes: no EF   all_gather
Sign               Seide et al. 2014           ceil(n/8) + 4        no: use EF   all_gather
PowerSGD           Vogels et al. 2019          4r(n_rows + n_cols)  no: use EF   all_reduce
=================  ==========================  ===================  ===========  ==============

Per tensor (a model's ``named_grads()``); ``ErrorFeedback`` wraps any of them. Training
with them: ``mlscale.train.compressed.CompressedDataParallel``. Kernels: mlscale.ops.
"""
from .base import Compressor, Identity, Payload, seed_for  # noqa: F401
from .error_feedback import ErrorFeedback  # noqa: F401
from .powersgd import PowerSGD, orthogonalize_gram_schmidt, orthogonalize_qr  # noqa: F401
from .quantize import QSGD, Sign  # noqa: F401
from .sparsify import RandomK, TopK  # noqa: F401

COMPRESSORS = {"none": Identity, "identity": Identity, "topk": TopK, "randomk": RandomK,
               "qsgd": QSGD, "sign": Sign, "powersgd": PowerSGD}


def make(name, error_feedback=False, **kwargs):
    """A compressor by name: ``make("topk", ratio=0.01, error_feedback=True)``.
    Names: none, topk, randomk, qsgd, sign, powersgd. ``error_feedback="auto"``: for the
    biased ones only (top-k, random-k, sign, PowerSGD; not QSGD or none)."""
    if error_feedback not in (True, False, "auto"):
        raise ValueError(f"error_feedback={error_feedback!r}: use True, False or 'auto'")
    if isinstance(name, Compressor):
        if kwargs:
            raise TypeError(f"make({name!r}, {', '.join(kwargs)}=...): options go to a compressor "
                            "given by name; this one is already built")
        comp = name
    else:
        key = str(name).lower().replace("-", "").replace("_", "")
        if key not in COMPRESSORS:
            raise ValueError(f"unknown compressor {name!r}; use one of {sorted(COMPRESSORS)} "
                             "or pass a Compressor")
        comp = COMPRESSORS[key](**kwargs)
    if error_feedback == "auto":
        error_feedback = not comp.unbiased
    if error_feedback and not isinstance(comp, ErrorFeedback):
        comp = ErrorFeedback(comp)
    return comp


__all__ = ["Compressor", "Payload", "Identity", "TopK", "RandomK", "QSGD", "Sign", "PowerSGD",
           "ErrorFeedback", "make", "COMPRESSORS", "seed_for", "orthogonalize_gram_schmidt",
           "orthogonalize_qr"]
